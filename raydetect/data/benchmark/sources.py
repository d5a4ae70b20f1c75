"""The real photographs of the offline benchmark: an explicit allow-list of files that packages ship.

Only photographs are listed (no drawings, renders, paintings, test patterns, microscopy, cut-outs or text),
in `photos.csv` beside this module, one row per photo: the package, the file inside it (and, for a Qt
resource file, the member inside that), a stable `photo_id` (the `group` of every crop taken from it) and a
`category` (`human` when people are visible). Sources whose package is not installed are skipped, so the
Debian packages (under /usr/share: wallpapers, gcompris-qt-data, palapeli-data, jigzo-data,
libjxl-testdata) are optional; the Python packages (scikit-image, scikit-learn, matplotlib) are project
dependencies. A photo's `path` is a locator: a file, `FILE::MEMBER` for a member of a `.rcc` file, or a
jigzo `.pzl` file (its photo is a rectangle of the atlas JPEG inside); `open_photo` reads any of them.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.resources
import importlib.util
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from raydetect.data.benchmark.packed import pzl_photo, read_member

DEBIAN_SHARE = Path("/usr/share")  # Debian installs desktop wallpapers under backgrounds/ and wallpapers/
ALLOW_LIST_FILE = "photos.csv"
MEMBER_SEP = "::"  # FILE::MEMBER, a member of a Qt resource file


@dataclass(frozen=True)
class PhotoEntry:
    """One allow-listed photograph; `kind` is `python` (a file inside an importable package) or `debian`."""

    photo_id: str
    kind: str
    package: str  # the Python package (kind=python) or the Debian package (kind=debian)
    relpath: str  # inside the package folder, or inside /usr/share
    category: str = "other"
    member: str = ""  # the path inside a Qt resource file (relpath ends in .rcc)


@dataclass(frozen=True)
class Photo:
    """An allow-listed photograph found on this machine."""

    photo_id: str
    path: str  # a locator: FILE, FILE::MEMBER or a .pzl file (see `open_photo`)
    category: str
    source: str  # the package it came from
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def load_allow_list(text: str | None = None) -> tuple[PhotoEntry, ...]:
    """The rows of `photos.csv` (or of `text`), `#` comment lines skipped."""
    if text is None:
        text = importlib.resources.files(__package__).joinpath(ALLOW_LIST_FILE).read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return tuple(
        PhotoEntry(row["photo_id"], row["kind"], row["package"], row["relpath"], row["category"] or "other",
                   row.get("member") or "")
        for row in csv.DictReader(lines)
    )  # fmt: skip


ALLOW_LIST: tuple[PhotoEntry, ...] = load_allow_list()


def _entry_source(entry: PhotoEntry) -> str:
    return entry.package.split(".")[0] if entry.kind == "python" else entry.package


SOURCE_NAMES = tuple(dict.fromkeys(_entry_source(entry) for entry in ALLOW_LIST))  # in allow-list order


def _resolve(entry: PhotoEntry, debian_root: Path) -> str | None:
    """The locator of `entry` on this machine, or None when its package (or the member) is absent."""
    if entry.kind == "debian":
        path = debian_root / entry.relpath
        if not path.is_file():
            return None
        if not entry.member:
            return str(path)
        try:
            read_member(path, entry.member)
        except (KeyError, ValueError):
            return None
        return f"{path}{MEMBER_SEP}{entry.member}"
    spec = importlib.util.find_spec(entry.package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / entry.relpath
        if path.is_file():
            return str(path)
    return None


def photo_bytes(locator: str) -> tuple[bytes, tuple[int, int, int, int] | None]:
    """The encoded bytes behind a locator and, for a jigzo atlas, the photo's rectangle in them."""
    if MEMBER_SEP in locator:
        path, member = locator.split(MEMBER_SEP, 1)
        return read_member(path, member), None
    data = Path(locator).read_bytes()
    if locator.endswith(".pzl"):
        return pzl_photo(data)
    return data, None


def open_photo(locator: str, decode: bool = True) -> Image.Image:
    """The photo behind a locator as an RGB image (`decode=False`: only opened, for its size)."""
    data, rect = photo_bytes(locator)
    image = Image.open(io.BytesIO(data))
    if rect is not None:
        image = image.crop(rect)
    return image.convert("RGB") if decode else image


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
        locator = _resolve(entry, Path(debian_root))
        if locator is None:
            continue
        width, height = open_photo(locator, decode=False).size
        if min(width, height) < min_side:
            continue
        found.append(Photo(entry.photo_id, locator, entry.category, source, width, height))
    return sorted(found, key=lambda p: p.photo_id)


def load_photo(locator: str) -> np.ndarray:
    """The photo as an RGB uint8 HxWx3 array (grey photos are replicated to three channels)."""
    return np.asarray(open_photo(locator))


def file_digest(locator: str) -> str:
    """A short content hash of a photo's encoded bytes (recorded in the benchmark card)."""
    return hashlib.sha256(photo_bytes(locator)[0]).hexdigest()[:16]


def write_contact_sheets(photos: list[Photo], out: str | Path, per_page: int = 80, thumb: int = 160) -> list[str]:
    """Thumbnails of `photos` with their ids, `per_page` to a PNG page: `out`, then `out`-2, -3, …"""
    from PIL import ImageDraw

    out = Path(out)
    cols = 10
    paths = []
    for page, start in enumerate(range(0, len(photos), per_page), start=1):
        chunk = photos[start : start + per_page]
        rows = -(-len(chunk) // cols)
        sheet = Image.new("RGB", (cols * thumb, rows * (thumb + 14)), "white")
        draw = ImageDraw.Draw(sheet)
        for i, photo in enumerate(chunk):
            image = open_photo(photo.path).convert("RGB")
            image.thumbnail((thumb, thumb))
            x, y = (i % cols) * thumb, (i // cols) * (thumb + 14)
            sheet.paste(image, (x + (thumb - image.width) // 2, y + (thumb - image.height) // 2))
            draw.text((x + 2, y + thumb), f"{photo.photo_id.split('/')[-1][:24]} {photo.category[0]}", fill="black")
        path = out if page == 1 else out.with_name(f"{out.stem}-{page}{out.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(path)
        paths.append(str(path))
    return paths
