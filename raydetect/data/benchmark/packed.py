"""Photographs packed inside other files: Qt resource files (gcompris) and jigzo puzzles.

**Qt resource files** (`.rcc`, the binary that `rcc -binary` writes). The format (qtbase
`src/corelib/io/qresource.cpp`, `tools/rcc/rcc.cpp`), all integers big-endian:
- header: `qres`, version (1-3), tree offset, data offset, names offset (4 bytes each), and for
  version 3 a flags word;
- tree: fixed-size nodes (14 bytes, plus an 8-byte modification time from version 2): name offset (4),
  flags (2: 1 zlib, 2 directory, 4 zstd), then for a directory child count (4) and first child index
  (4), for a file territory (2), language (2) and data offset (4). Node 0 is the root directory;
- names: length in UTF-16 code units (2), hash (4), the UTF-16BE characters;
- data: length (4) then the bytes; zlib-compressed files start with their uncompressed length (4).

`rcc_files` yields (path, bytes) in tree order with stable paths like `gcompris/src/.../foo.webp`, so an
allow-list can name a member. zstd-compressed members need the `zstandard` package and are skipped
without it (images are stored uncompressed: rcc keeps compression only when it saves space).

**jigzo puzzles** (`.pzl`): a text header (`PzlF`, version, name, URL, the piece map, then a line
`image X Y W H ...` giving the photo's rectangle in the atlas), then members, each a name line, a size
line and that many bytes: a thumbnail (`NAME-t.jpg`), the piece mask (`NAME.png`) and the atlas
(`NAME.jpg`) that holds the photo at that rectangle and the pieces' edges beside it.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

MAGIC = b"qres"
FLAG_ZLIB, FLAG_DIRECTORY, FLAG_ZSTD = 0x01, 0x02, 0x04
IMAGE_SIGNATURES = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"))


class RccError(ValueError):
    """Not a Qt resource file, or a damaged one."""


def image_format(data: bytes) -> str | None:
    """JPEG / PNG / WEBP from the leading bytes, else None."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((name for magic, name in IMAGE_SIGNATURES if data.startswith(magic)), None)


class RccReader:
    """A parsed `.rcc` blob; `files()` walks its tree."""

    def __init__(self, blob: bytes):
        if blob[:4] != MAGIC or len(blob) < 20:
            raise RccError("not a Qt resource file (no 'qres' header)")
        self.blob = blob
        self.version, self.tree, self.data, self.names = struct.unpack_from(">4I", blob, 4)
        if not 1 <= self.version <= 3:
            raise RccError(f"unsupported rcc version {self.version}")
        self.node_size = 14 if self.version == 1 else 22

    def _u16(self, offset: int) -> int:
        return struct.unpack_from(">H", self.blob, offset)[0]

    def _u32(self, offset: int) -> int:
        return struct.unpack_from(">I", self.blob, offset)[0]

    def _name(self, node: int) -> str:
        offset = self.names + self._u32(self.tree + node * self.node_size)
        length = self._u16(offset)
        return self.blob[offset + 6 : offset + 6 + 2 * length].decode("utf-16-be")

    def _payload(self, node: int, flags: int) -> bytes | None:
        offset = self.data + self._u32(self.tree + node * self.node_size + 10)
        size = self._u32(offset)
        raw = self.blob[offset + 4 : offset + 4 + size]
        if flags & FLAG_ZLIB:
            return zlib.decompress(raw[4:])
        if flags & FLAG_ZSTD:
            try:
                import zstandard
            except ImportError:
                return None
            return zstandard.ZstdDecompressor().decompress(raw)
        return raw

    def files(self) -> Iterator[tuple[str, bytes]]:
        """(path, bytes) for every file, depth first; paths joined with `/`, without a leading slash."""
        stack: list[tuple[int, str]] = [(0, "")]
        while stack:
            node, prefix = stack.pop()
            base = self.tree + node * self.node_size
            flags = self._u16(base + 4)
            name = self._name(node) if node else ""
            path = f"{prefix}/{name}" if prefix else name
            if flags & FLAG_DIRECTORY:
                count, first = struct.unpack_from(">2I", self.blob, base + 6)
                stack.extend((child, path) for child in reversed(range(first, first + count)))
                continue
            payload = self._payload(node, flags)
            if payload is not None:
                yield path, payload


def rcc_files(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """Every file packed in the `.rcc` blob, as (path, bytes)."""
    return RccReader(blob).files()


def rcc_images(blob: bytes) -> Iterator[tuple[str, bytes]]:
    """The members whose bytes are a JPEG, PNG or WebP image (recognised by signature, not by name)."""
    return ((path, data) for path, data in rcc_files(blob) if image_format(data))


@lru_cache(maxsize=4)
def _members(path: str, mtime_ns: int) -> dict[str, bytes]:
    return dict(rcc_images(Path(path).read_bytes()))


def read_member(path: str | Path, member: str) -> bytes:
    """The bytes of image `member` of the `.rcc` file at `path` (the file's image index is cached)."""
    path = Path(path)
    members = _members(str(path), path.stat().st_mtime_ns)
    if member not in members:
        raise KeyError(f"{member} is not an image in {path}")
    return members[member]


class PzlError(ValueError):
    """Not a jigzo puzzle, or a damaged one."""


def pzl_members(blob: bytes) -> tuple[tuple[int, int, int, int], dict[str, bytes]]:
    """The photo's rectangle (left, top, right, bottom) in the atlas, and the members by name."""
    if not blob.startswith(b"PzlF"):
        raise PzlError("not a jigzo puzzle (no 'PzlF' header)")
    start = blob.find(b"\nimage ")
    if start < 0:
        raise PzlError("no 'image X Y W H' line")
    end = blob.index(b"\n", start + 1)
    left, top, width, height = (int(v) for v in blob[start + 1 : end].split()[1:5])
    members: dict[str, bytes] = {}
    offset = end + 1
    while offset < len(blob):
        name_end = blob.index(b"\n", offset)
        size_end = blob.index(b"\n", name_end + 1)
        size = int(blob[name_end + 1 : size_end])
        members[blob[offset:name_end].decode()] = blob[size_end + 1 : size_end + 1 + size]
        offset = size_end + 1 + size
    return (left, top, left + width, top + height), members


def pzl_photo(blob: bytes) -> tuple[bytes, tuple[int, int, int, int]]:
    """The atlas JPEG of a jigzo puzzle and the photo's rectangle in it."""
    rect, members = pzl_members(blob)
    atlases = [name for name in members if name.endswith(".jpg") and not name.endswith("-t.jpg")]
    if len(atlases) != 1:
        raise PzlError(f"expected one atlas JPEG, found {sorted(members)}")
    return members[atlases[0]], rect
