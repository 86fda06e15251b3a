"""One storage layer for local paths and s3:// URIs (pyarrow.fs).

S3 endpoint, region and credentials come from the standard AWS environment
variables (AWS_ENDPOINT_URL, AWS_DEFAULT_REGION / AWS_REGION, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY). A bare `pyarrow.fs.S3FileSystem()` ignores AWS_ENDPOINT_URL,
so S3 filesystems are built here, in one place.
"""

from __future__ import annotations

import csv
import io
import os
import posixpath
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Location:
    """A resolved URI: the filesystem and the path inside it (no scheme)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = ("s3://" + path) if self.is_s3 else path
        return Location(self.fs, path, uri)


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem configured from the standard AWS environment variables."""
    kwargs: dict = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        kwargs["secret_key"] = os.environ.get("AWS_SECRET_ACCESS_KEY", "")
        if os.environ.get("AWS_SESSION_TOKEN"):
            kwargs["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str | os.PathLike) -> Location:
    """Resolve a local path or s3://bucket/key URI."""
    uri = os.fspath(uri)
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].rstrip("/")
        if not path:
            raise ValueError(f"S3 URI needs a bucket: {uri!r}")
        return Location(s3_filesystem(), path, "s3://" + path)
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported URI scheme in {uri!r}: use a local path or s3://bucket/key")
    path = os.path.abspath(uri[len("file://") :] if uri.startswith("file://") else uri)
    return Location(pafs.LocalFileSystem(), path, path)


def exists(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type != pafs.FileType.NotFound


def is_dir(loc: Location) -> bool:
    return loc.fs.get_file_info(loc.path).type == pafs.FileType.Directory


def list_dir(loc: Location) -> list[pafs.FileInfo]:
    """Direct children of a directory, sorted by name."""
    selector = pafs.FileSelector(loc.path, allow_not_found=False, recursive=False)
    infos = loc.fs.get_file_info(selector)
    return sorted(infos, key=lambda i: i.base_name)


def list_files(loc: Location, recursive: bool = True) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(loc.path, allow_not_found=True, recursive=recursive)
    infos = loc.fs.get_file_info(selector)
    return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)


def uri_of(loc: Location, path: str) -> str:
    """The URI of another path on the same filesystem as `loc`."""
    return ("s3://" + path) if loc.is_s3 else path


def read_bytes(uri_or_loc: str | Location) -> bytes:
    loc = uri_or_loc if isinstance(uri_or_loc, Location) else resolve(uri_or_loc)
    with loc.fs.open_input_stream(loc.path) as f:
        return f.read()


def write_bytes(loc: Location, data: bytes) -> None:
    """Write a file atomically where the filesystem allows it (local: temp + rename)."""
    parent = posixpath.dirname(loc.path)
    loc.fs.create_dir(parent, recursive=True)
    if loc.is_s3:  # an S3 PUT is atomic per object
        with loc.fs.open_output_stream(loc.path) as f:
            f.write(data)
        return
    tmp = f"{loc.path}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, loc.path)


def delete_dir(loc: Location) -> None:
    if exists(loc):
        loc.fs.delete_dir(loc.path)


def write_text(loc: Location, text: str) -> None:
    """Write a UTF-8 text file atomically (see `write_bytes`)."""
    write_bytes(loc, text.encode())


def make_dirs(loc: Location) -> None:
    """Create a local folder and its parents; nothing on S3, where folders are key prefixes."""
    if not loc.is_s3:
        loc.fs.create_dir(loc.path, recursive=True)


def write_csv(loc: Location, rows: Iterable[Sequence]) -> None:
    """Rows (the first one the header) as a CSV file, written atomically (`write_bytes`)."""
    text = io.StringIO(newline="")
    csv.writer(text).writerows(rows)
    write_text(loc, text.getvalue())
