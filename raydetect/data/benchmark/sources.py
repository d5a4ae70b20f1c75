"""The real photographs of the offline benchmark: an explicit allow-list of files that packages ship.

Only photographs are listed (no drawings, renders, test patterns, microscopy or text). Each entry names
the package, the file inside it, a stable `photo_id` (the `group` of every crop taken from it) and a
`category` (`human` when people are shown). Sources whose package is not installed are skipped, so the
Debian wallpapers (under /usr/share: `backgrounds/` for MATE and Lomiri, `wallpapers/` for Plasma) are
optional; the Python packages (scikit-image, scikit-learn, matplotlib) are project dependencies.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_SHARE = Path("/usr/share")  # Debian installs desktop wallpapers under backgrounds/ and wallpapers/


@dataclass(frozen=True)
class PhotoEntry:
    """One allow-listed photograph; `kind` is `python` (a file inside an importable package) or `debian`."""

    photo_id: str
    kind: str
    package: str  # the Python package (kind=python) or the Debian package (kind=debian)
    relpath: str  # inside the package folder, or inside /usr/share
    category: str = "other"


@dataclass(frozen=True)
class Photo:
    """An allow-listed photograph found on this machine."""

    photo_id: str
    path: str
    category: str
    source: str  # the package it came from
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _py(package: str, relpath: str, name: str, category: str = "other") -> PhotoEntry:
    return PhotoEntry(f"{package.split('.')[0]}/{name}", "python", package, relpath, category)


def _deb(package: str, relpath: str, category: str = "other", name: str | None = None) -> PhotoEntry:
    return PhotoEntry(f"{package}/{name or Path(relpath).stem}", "debian", package, relpath, category)


# The allow-list. Excluded on purpose: skimage horse/logo/text/page/chessboard (drawings, patterns),
# retina/cell/ihc/microaneurysms (medical, microscopy), motorcycle_right (the stereo twin of _left),
# lfw_subset (25-px faces), matplotlib logo2/Minduka (renders), the sklearn set has only photos;
# lomiri analogpattern and umang (abstract renders); MATE abstract/ and desktop/ (renders); Lomiri 20.04
# Fossa, Infinite-Sea, Painting-Colors (renders, a painting); Plasma's renders and drawings, Volna (a polygon
# render) and Kite (a sky photo with a drawn kite pasted in).
ALLOW_LIST: tuple[PhotoEntry, ...] = (
    # scikit-image
    _py("skimage.data", "astronaut.png", "astronaut", "human"),
    _py("skimage.data", "camera.png", "camera", "human"),
    _py("skimage.data", "coffee.png", "coffee"),
    _py("skimage.data", "chelsea.png", "chelsea"),
    _py("skimage.data", "rocket.jpg", "rocket"),
    _py("skimage.data", "motorcycle_left.png", "motorcycle"),
    _py("skimage.data", "grass.png", "grass"),
    _py("skimage.data", "gravel.png", "gravel"),
    _py("skimage.data", "brick.png", "brick"),
    # scikit-learn
    _py("sklearn.datasets", "images/china.jpg", "china"),
    _py("sklearn.datasets", "images/flower.jpg", "flower"),
    # matplotlib
    _py("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "grace_hopper", "human"),
    # Debian mate-backgrounds, nature folder
    *(
        _deb("mate-backgrounds", f"backgrounds/mate/nature/{name}.jpg")
        for name in (
            "Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow",
            "LadyBird", "RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower",
        )
    ),
    # Debian lomiri-wallpapers-16.04
    *(
        _deb("lomiri-wallpapers-16.04", f"backgrounds/{name}.jpg")
        for name in (
            "Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace",
            "Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi",
            "free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi", "greentock_by_Peter_Nerlich",
            "life_by_Aitzol_Berasategi", "picosdeeuropa_by_Aitzol_Berasategi",
            "seeding_by_Clements_Engelhardt", "sunset_by_Aitzol_Berasategi",
        )
    ),
    # Debian lomiri-wallpapers-20.04: its one photograph
    _deb("lomiri-wallpapers-20.04", "backgrounds/Kleiber_by_Lukas_Baubkus.jpg"),
    # Debian plasma-workspace-wallpapers: the photographs, at 2560x1600 (the largest size each one ships)
    *(
        _deb("plasma-workspace-wallpapers", f"wallpapers/{name}/contents/images/2560x1600.jpg", name=name)
        for name in (
            "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf", "Grey",
            "OneStandsOut", "Path", "summer_1am",
        )
    ),
)  # fmt: skip


def _entry_source(entry: PhotoEntry) -> str:
    return entry.package.split(".")[0] if entry.kind == "python" else entry.package


SOURCE_NAMES = tuple(dict.fromkeys(_entry_source(entry) for entry in ALLOW_LIST))  # in allow-list order


def _resolve(entry: PhotoEntry, debian_root: Path) -> Path | None:
    if entry.kind == "debian":
        path = debian_root / entry.relpath
        return path if path.is_file() else None
    spec = importlib.util.find_spec(entry.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / entry.relpath
        if path.is_file():
            return path
    return None


def find_photos(
    sources: tuple[str, ...] | list[str] | None = None,
    debian_root: str | Path = DEBIAN_SHARE,
    min_side: int = 0,
) -> list[Photo]:
    """The allow-listed photos present on this machine (sorted by id), optionally only from `sources`
    (names in `SOURCE_NAMES`) and only those whose shorter side is at least `min_side` pixels."""
    if sources is not None:
        unknown = set(sources) - set(SOURCE_NAMES)
        if unknown:
            raise ValueError(f"unknown photo source(s) {sorted(unknown)}; known: {', '.join(SOURCE_NAMES)}")
    found = []
    for entry in ALLOW_LIST:
        source = _entry_source(entry)
        if sources is not None and source not in sources:
            continue
        path = _resolve(entry, Path(debian_root))
        if path is None:
            continue
        with Image.open(path) as image:
            width, height = image.size
        if min(width, height) < min_side:
            continue
        found.append(Photo(entry.photo_id, str(path), entry.category, source, width, height))
    return sorted(found, key=lambda p: p.photo_id)


def load_photo(path: str) -> np.ndarray:
    """The photo as an RGB uint8 HxWx3 array (grey photos are replicated to three channels)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def file_digest(path: str) -> str:
    """A short content hash of a source file (recorded in the benchmark card)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]
