"""The photo allow-list: package photos always found, Debian sources optional (each checked where it is
installed), no drawings; the readers of photos packed in Qt resource files and jigzo puzzles."""

from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from raydetect.data.benchmark.packed import (
    RccError,
    image_format,
    pzl_photo,
    rcc_files,
    rcc_images,
    read_member,
)
from raydetect.data.benchmark.sources import (
    ALLOW_LIST,
    DEBIAN_SHARE,
    SOURCE_NAMES,
    find_photos,
    load_allow_list,
    load_photo,
    open_photo,
)
from tests.datasets import encode, smooth_photo

PYTHON_PHOTOS = {
    "skimage/astronaut", "skimage/camera", "skimage/coffee", "skimage/chelsea", "skimage/rocket",
    "skimage/motorcycle", "skimage/grass", "skimage/gravel", "skimage/brick", "sklearn/china", "sklearn/flower",
    "matplotlib/grace_hopper",
}  # fmt: skip
DEBIAN_SOURCES = [s for s in SOURCE_NAMES if s not in ("skimage", "sklearn", "matplotlib")]


def test_python_package_photos_are_found_without_debian(tmp_path):
    photos = find_photos(debian_root=tmp_path)  # an empty folder: as if no Debian package were installed
    assert {p.photo_id for p in photos} == PYTHON_PHOTOS
    assert {p.photo_id for p in photos if p.category == "human"} == {
        "skimage/astronaut",
        "skimage/camera",
        "matplotlib/grace_hopper",
    }
    for photo in photos:
        assert min(photo.width, photo.height) >= 256
        image = load_photo(photo.path)
        assert image.shape == (photo.height, photo.width, 3) and image.dtype.name == "uint8"


def test_debian_photos_are_optional_and_listed_by_name(tmp_path):
    entry = next(e for e in ALLOW_LIST if e.package == "mate-backgrounds")
    fake = tmp_path / entry.relpath
    fake.parent.mkdir(parents=True)
    shutil.copy(next(p for p in find_photos(["sklearn"])).path, fake)
    (fake.parent / "NotListed.jpg").write_bytes(fake.read_bytes())  # not in the list: ignored
    photos = find_photos(["mate-backgrounds"], debian_root=tmp_path)
    assert [p.photo_id for p in photos] == [entry.photo_id]
    assert photos[0].source == "mate-backgrounds"


@pytest.mark.parametrize("source", DEBIAN_SOURCES)
def test_installed_debian_sources_resolve_to_plausible_photos(source):
    entries = [e for e in ALLOW_LIST if e.package == source]
    if not (DEBIAN_SHARE / entries[0].relpath).is_file():
        pytest.skip(f"Debian package {source} is not installed")
    photos = find_photos([source])
    assert {p.photo_id for p in photos} == {e.photo_id for e in entries}  # every listed photo is there
    for photo in photos:
        assert min(photo.width, photo.height) >= 180 and max(photo.width, photo.height) <= 8192, photo
    for photo in photos[:: max(1, len(photos) // 2)][:2]:  # decode two: RGB at the listed size, not flat
        image = open_photo(photo.path, decode=False)
        assert image.size == (photo.width, photo.height)
        image.draft("RGB", (photo.width // 4, photo.height // 4))  # JPEG: decode at a quarter of the size
        assert np.asarray(image.convert("RGB")).std() > 10


def test_allow_list_is_unique_and_excludes_non_photos():
    ids = [e.photo_id for e in ALLOW_LIST]
    assert len(ids) == len(set(ids)) and len(ids) >= 250
    banned = (
        "horse", "logo", "text", "page", "chessboard", "retina", "cell", "ihc", "analogpattern", "umang", "Minduka",
        "logo2", "Fossa", "Infinite-Sea", "Painting-Colors", "Volna", "Kite",
    )  # fmt: skip
    assert not [i for i in ids if i.split("/")[1].split("_by_")[0] in banned]  # (gcompris' erase/horse is a photo)
    assert not [e for e in ALLOW_LIST if "abstract" in e.relpath or "desktop" in e.relpath]
    gcompris = [e for e in ALLOW_LIST if e.package == "gcompris-qt-data"]
    assert not [e for e in gcompris if any(k in e.member for k in ("/lang/", "/paintings/", "Van_Gogh", "Gogh"))]
    assert all(e.member and e.relpath.endswith(".rcc") for e in gcompris)
    assert not [e for e in ALLOW_LIST if "opencv" in e.package or "darknet" in e.package]  # reserved
    assert {e.category for e in ALLOW_LIST} == {"human", "other"}
    assert load_allow_list("# note\nphoto_id,package,kind,relpath,member,category\na/b,a,debian,x.jpg,,\n") == (
        ALLOW_LIST[0].__class__("a/b", "debian", "a", "x.jpg", "other", ""),
    )


def test_sources_filter_and_unknown_source():
    assert {p.source for p in find_photos(["skimage", "matplotlib"])} == {"skimage", "matplotlib"}
    assert SOURCE_NAMES == (
        "skimage", "sklearn", "matplotlib", "mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
        "plasma-workspace-wallpapers", "palapeli-data", "jigzo-data", "libjxl-testdata", "gcompris-qt-data",
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown photo source"):
        find_photos(["flickr"])


# --- packed photos ---------------------------------------------------------------------------------------


def make_rcc(files: dict[str, bytes], compressed: frozenset[str] = frozenset(), version: int = 3) -> bytes:
    """A Qt resource file holding `files` (paths with `/`), in the layout `rcc -binary` writes."""
    tree: dict = {}
    for path in files:
        node = tree
        *folders, leaf = path.split("/")
        for folder in folders:
            node = node.setdefault(folder, {})
        node[leaf] = path
    nodes: list[tuple[str, object]] = [("", tree)]  # breadth first: every directory's children are contiguous
    children: dict[int, tuple[int, int]] = {}
    index = 0
    while index < len(nodes):
        name, value = nodes[index]
        if isinstance(value, dict):
            children[index] = (len(value), len(nodes))
            nodes.extend(sorted(value.items()))
        index += 1
    names, data, tree_bytes = bytearray(), bytearray(), bytearray()
    for i, (name, value) in enumerate(nodes):
        name_offset = len(names)
        names += struct.pack(">HI", len(name), 0) + name.encode("utf-16-be")
        if isinstance(value, dict):
            count, first = children[i]
            tree_bytes += struct.pack(">IHII", name_offset, 0x02, count, first)
        else:
            payload = files[value]
            flags = 0
            if value in compressed:
                payload, flags = struct.pack(">I", len(payload)) + zlib.compress(payload), 0x01
            tree_bytes += struct.pack(">IHHHI", name_offset, flags, 0, 0, len(data))
            data += struct.pack(">I", len(payload)) + payload
        if version >= 2:
            tree_bytes += struct.pack(">Q", 0)
    header_size = 24 if version >= 3 else 20
    data_offset = header_size
    names_offset = data_offset + len(data)
    tree_offset = names_offset + len(names)
    header = b"qres" + struct.pack(">4I", version, tree_offset, data_offset, names_offset)
    if version >= 3:
        header += struct.pack(">I", 0)
    return header + bytes(data) + bytes(names) + bytes(tree_bytes)


def _images() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    return {
        "app/res/photo.png": encode(smooth_photo(rng, 40)),
        "app/res/deep/photo.jpg": encode(smooth_photo(rng, 48), "JPEG"),
        "app/res/photo.webp": encode(smooth_photo(rng, 32), "WEBP"),
        "app/main.qml": b"import QtQuick 2.0\n" * 20,
    }


@pytest.mark.parametrize("version", [1, 2, 3])
def test_rcc_reader_names_every_file_and_finds_the_images(version, tmp_path: Path):
    files = _images()
    blob = make_rcc(files, compressed=frozenset({"app/main.qml", "app/res/photo.png"}), version=version)
    assert dict(rcc_files(blob)) == files  # paths from the tree, zlib members inflated
    images = dict(rcc_images(blob))
    assert set(images) == {"app/res/photo.png", "app/res/deep/photo.jpg", "app/res/photo.webp"}
    assert {image_format(b) for b in images.values()} == {"PNG", "JPEG", "WEBP"}
    path = tmp_path / "pack.rcc"
    path.write_bytes(blob)
    with Image.open(io.BytesIO(read_member(path, "app/res/photo.webp"))) as image:
        assert image.format == "WEBP" and image.size == (32, 32)
    with pytest.raises(KeyError):
        read_member(path, "app/main.qml")  # not an image
    with pytest.raises(RccError):
        list(rcc_files(b"PK\x03\x04" + bytes(40)))


def test_rcc_member_and_pzl_atlas_photos_open_by_locator(tmp_path: Path):
    from raydetect.data.benchmark.sources import MEMBER_SEP, file_digest

    files = _images()
    (tmp_path / "pack.rcc").write_bytes(make_rcc(files))
    locator = f"{tmp_path / 'pack.rcc'}{MEMBER_SEP}app/res/photo.png"
    assert open_photo(locator).size == (40, 40) and open_photo(locator).mode == "RGB"
    assert file_digest(locator) == file_digest(locator) and len(file_digest(locator)) == 16

    atlas = np.zeros((64, 96, 3), np.uint8)
    atlas[5:45, 10:70] = 200  # the photo's rectangle: 60 x 40 at (10, 5)
    jpeg = encode(atlas, "JPEG", 95)
    members = [("demo-t.jpg", encode(atlas[:8, :8], "JPEG")), ("demo.png", encode(atlas)), ("demo.jpg", jpeg)]
    body = b"".join(f"{name}\n{len(data)}\n".encode() + data for name, data in members)
    header = b"PzlF\n0.1\ndemo\nhttp://example.org/\ndemo.map\n1\n#texture map data\ncrop000 0 0 1 1\n"
    pzl = header + b"image 10 5 60 40 1 1    \n" + body
    assert pzl_photo(pzl) == (jpeg, (10, 5, 70, 45))
    (tmp_path / "demo.pzl").write_bytes(pzl)
    photo = open_photo(str(tmp_path / "demo.pzl"))
    assert photo.size == (60, 40) and np.asarray(photo).mean() > 190


def test_contact_sheets_show_every_photo(tmp_path):
    from PIL import Image

    from raydetect.data.benchmark.sources import find_photos, write_contact_sheets

    photos = find_photos(("skimage",))
    paths = write_contact_sheets(photos, tmp_path / "sheet.png", per_page=5, thumb=40)
    assert len(paths) == -(-len(photos) // 5) and paths[1].endswith("sheet-2.png")
    assert Image.open(paths[0]).size == (400, 54)  # 10 columns, one row of 40 px thumbnails + captions
