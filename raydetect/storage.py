"""URIs (`/local/path`, `file://…`, `s3://bucket/key`) to pyarrow and fsspec filesystems.

S3 endpoint, region and credentials come from the config's `storage` section, else from the standard
AWS environment variables (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
`AWS_SESSION_TOKEN`, `AWS_DEFAULT_REGION`). Nothing is read at import time.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

from raydetect.config import StorageSettings


@dataclass(frozen=True)
class S3Options:
    endpoint_url: str | None
    region: str
    key: str | None
    secret: str | None
    token: str | None
    anonymous: bool

    @classmethod
    def resolve(cls, settings: StorageSettings | None = None) -> S3Options:
        settings = settings or StorageSettings()
        env = os.environ
        return cls(
            endpoint_url=settings.endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"),
            region=settings.region or env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            key=env.get("AWS_ACCESS_KEY_ID"),
            secret=env.get("AWS_SECRET_ACCESS_KEY"),
            token=env.get("AWS_SESSION_TOKEN"),
            anonymous=settings.anonymous,
        )


def is_s3(uri: str) -> bool:
    return str(uri).startswith(("s3://", "s3a://"))


def strip_scheme(uri: str) -> str:
    """The filesystem path of a URI: `s3://b/k` -> `b/k`, `file:///x` -> `/x`, `rel/x` -> absolute."""
    uri = str(uri)
    if is_s3(uri):
        parsed = urlparse(uri)
        return f"{parsed.netloc}{parsed.path}".rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    return str(Path(uri).expanduser().resolve())


def normalize(uri: str | Path) -> str:
    """A canonical URI: `s3://bucket/key` for S3, an absolute local path otherwise."""
    uri = str(uri)
    if is_s3(uri):
        return "s3://" + strip_scheme(uri)
    return strip_scheme(uri)


def join(uri: str | Path, *parts: str) -> str:
    base = normalize(uri)
    if is_s3(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base).joinpath(*parts))


def pyarrow_fs(uri: str, settings: StorageSettings | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it (what Ray Data's `filesystem=` expects)."""
    if not is_s3(str(uri)):
        return pafs.LocalFileSystem(), strip_scheme(uri)
    opts = S3Options.resolve(settings)
    kwargs: dict = {"region": opts.region, "anonymous": opts.anonymous}
    if opts.key and opts.secret and not opts.anonymous:
        kwargs.update(access_key=opts.key, secret_key=opts.secret, session_token=opts.token)
    if opts.endpoint_url:
        parsed = urlparse(opts.endpoint_url)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**kwargs), strip_scheme(uri)


def fsspec_fs(uri: str, settings: StorageSettings | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """An fsspec filesystem (s3fs for S3) and the path inside it."""
    if not is_s3(str(uri)):
        return fsspec.filesystem("file"), strip_scheme(uri)
    opts = S3Options.resolve(settings)
    client_kwargs: dict = {"region_name": opts.region}
    if opts.endpoint_url:
        client_kwargs["endpoint_url"] = opts.endpoint_url
    fs = fsspec.filesystem(
        "s3",
        anon=opts.anonymous,
        key=opts.key,
        secret=opts.secret,
        token=opts.token,
        client_kwargs=client_kwargs,
        skip_instance_cache=True,
    )
    return fs, strip_scheme(uri)


def exists(uri: str, settings: StorageSettings | None = None) -> bool:
    fs, path = fsspec_fs(uri, settings)
    return fs.exists(path)


def read_bytes(uri: str, settings: StorageSettings | None = None) -> bytes:
    fs, path = fsspec_fs(uri, settings)
    with fs.open(path, "rb") as handle:
        return handle.read()


def write_bytes(uri: str, data: bytes, settings: StorageSettings | None = None) -> None:
    """Write `data` to `uri`. Local writes are atomic (temp file + rename); S3 puts are atomic already."""
    if not is_s3(str(uri)):
        atomic_write_local(strip_scheme(uri), data)
        return
    fs, path = fsspec_fs(uri, settings)
    with fs.open(path, "wb") as handle:
        handle.write(data)


def atomic_write_local(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(uri: str, text: str, settings: StorageSettings | None = None) -> None:
    write_bytes(uri, text.encode("utf-8"), settings)


def read_text(uri: str, settings: StorageSettings | None = None) -> str:
    return read_bytes(uri, settings).decode("utf-8")


def makedirs(uri: str, settings: StorageSettings | None = None) -> None:
    if is_s3(str(uri)):
        return  # S3 has no directories
    Path(strip_scheme(uri)).mkdir(parents=True, exist_ok=True)


def list_files(uri: str, settings: StorageSettings | None = None, suffixes: tuple[str, ...] = ()) -> list[str]:
    """All files under `uri`, recursively, as URIs of the same kind, sorted."""
    fs, path = fsspec_fs(uri, settings)
    found = fs.find(path)
    prefix = "s3://" if is_s3(str(uri)) else ""
    out = [prefix + p for p in found if not suffixes or p.lower().endswith(suffixes)]
    return sorted(out)
