"""The photo allow-list: package photos always found, Debian wallpapers optional, no drawings."""

from __future__ import annotations

import shutil

import pytest

from raydetect.data.benchmark.sources import ALLOW_LIST, SOURCE_NAMES, find_photos, load_photo

PYTHON_PHOTOS = {
    "skimage/astronaut", "skimage/camera", "skimage/coffee", "skimage/chelsea", "skimage/rocket",
    "skimage/motorcycle", "skimage/grass", "skimage/gravel", "skimage/brick", "sklearn/china", "sklearn/flower",
    "matplotlib/grace_hopper",
}  # fmt: skip


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


def test_debian_wallpapers_are_optional_and_listed_by_name(tmp_path):
    entry = next(e for e in ALLOW_LIST if e.package == "mate-backgrounds")
    fake = tmp_path / entry.relpath
    fake.parent.mkdir(parents=True)
    shutil.copy(next(p for p in find_photos(["sklearn"])).path, fake)
    (fake.parent / "NotListed.jpg").write_bytes(fake.read_bytes())  # not in the list: ignored
    photos = find_photos(["mate-backgrounds"], debian_root=tmp_path)
    assert [p.photo_id for p in photos] == [entry.photo_id]
    assert photos[0].source == "mate-backgrounds"


def test_allow_list_is_unique_and_excludes_non_photos():
    ids = [e.photo_id for e in ALLOW_LIST]
    assert len(ids) == len(set(ids))
    banned = (
        "horse",
        "logo",
        "text",
        "page",
        "chessboard",
        "retina",
        "cell",
        "ihc",
        "analogpattern",
        "umang",
        "Minduka",
        "logo2",
        "Fossa",
        "Infinite-Sea",
        "Painting-Colors",
        "Volna",
        "Kite",
    )
    assert not [i for i in ids if i.split("/")[-1].split("_by_")[0] in banned]
    assert not [e for e in ALLOW_LIST if "abstract" in e.relpath or "desktop" in e.relpath]


def test_sources_filter_and_unknown_source():
    assert {p.source for p in find_photos(["skimage", "matplotlib"])} == {"skimage", "matplotlib"}
    assert SOURCE_NAMES == (
        "skimage", "sklearn", "matplotlib", "mate-backgrounds", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04",
        "plasma-workspace-wallpapers",
    )  # fmt: skip
    with pytest.raises(ValueError, match="unknown photo source"):
        find_photos(["flickr"])
