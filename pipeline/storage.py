"""Object storage: locations are local folders or `s3://bucket/prefix` URIs on any S3-compatible store.

Credentials and the endpoint come from the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_DEFAULT_REGION / AWS_REGION, AWS_ENDPOINT_URL for a store other than AWS) or from an
Airflow connection (setting `aws_conn_id`: every DAG task exports it into the same variables first, see
`use_airflow_connection`). pyarrow's S3
filesystem reads and writes Parquet; Delta Lake (pipeline.lake) gets the same settings as storage options; DuckDB
reads snapshots as Arrow datasets (its own httpfs extension cannot be installed).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.atomic import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "s3a://")


def is_remote(location: Any) -> bool:
    return str(location).startswith(REMOTE_SCHEMES)


def join(location: Any, *parts: str) -> str:
    """A location below `location` (a local path or a URI), as a string."""
    return "/".join([str(location).rstrip("/"), *parts])


@functools.cache
def _s3() -> pafs.S3FileSystem:
    import pyarrow.fs as pafs

    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        options.update(endpoint_override=host, scheme=scheme)
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    atexit.register(pafs.finalize_s3)  # pyarrow's S3 client must be shut down before the interpreter exits
    return pafs.S3FileSystem(**options)


def use_airflow_connection(conn_id: str) -> None:
    """Export an Airflow AWS connection into this process's AWS environment: login and password are the key
    pair; the extra's `aws_session_token`, `region_name` and `endpoint_url` (or `service_config.s3.endpoint_url`)
    are used when present. Nothing to do without a connection id."""
    if not conn_id:
        return
    from airflow.sdk import Connection

    conn = Connection.get(conn_id)
    extra = conn.extra_dejson or {}
    endpoint = extra.get("endpoint_url") or extra.get("service_config", {}).get("s3", {}).get("endpoint_url")
    values = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
              "AWS_SESSION_TOKEN": extra.get("aws_session_token"), "AWS_DEFAULT_REGION": extra.get("region_name"),
              "AWS_ENDPOINT_URL": endpoint}
    os.environ.update({name: str(value) for name, value in values.items() if value})
    _s3.cache_clear()  # the next S3 filesystem is built from the new environment


def filesystem(location: Any) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path within it) of a location."""
    import pyarrow.fs as pafs

    text = str(location)
    if is_remote(text):
        return _s3(), text.split("://", 1)[1]
    return pafs.LocalFileSystem(), text


def delta_options(location: Any) -> dict[str, str] | None:
    """Storage options for delta-rs: None for local tables; for S3, the AWS environment, plain HTTP allowed
    for a local endpoint, and conditional PUT so that concurrent commits cannot overwrite each other."""
    if not is_remote(location):
        return None
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL")
    options = {name: os.environ[name] for name in names if os.environ.get(name)}
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    if options.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        options["AWS_ALLOW_HTTP"] = "true"
    options["conditional_put"] = "etag"  # a commit is an If-None-Match PUT: concurrent writers cannot clobber
    return options


# --- files: one implementation of each operation for local folders and URIs. A location is a Path (local) or
# a URI string; what the listings return has the same kind as what they were given. ---

def child(location: Path | str, name: str) -> Path | str:
    """The entry `name` directly below a location, of the same kind (Path or URI)."""
    return join(location, name) if isinstance(location, str) else Path(location) / name


def as_location(text: str | Path) -> Path | str:
    """A location from its text (an XCom value, a ledger entry): a URI stays a string, anything else is a path."""
    return str(text) if is_remote(text) else Path(text)


def name_of(location: Path | str) -> str:
    """The last component of a location (a file's or folder's name)."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def exists(location: Path | str) -> bool:
    """Whether a file or a folder (on S3: any object below the prefix) is there."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size_of(location: Path | str) -> int:
    """A file's size in bytes (0 when absent)."""
    fs, path = filesystem(location)
    return max(fs.get_file_info(path).size or 0, 0)


def _entries(location: Path | str, recursive: bool) -> list[Any]:
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    return fs.get_file_info(pafs.FileSelector(path, recursive=recursive))


def _same_kind(location: Path | str, path: str) -> Path | str:
    """A path within the filesystem of `location` as a location of the same kind."""
    if isinstance(location, str) and is_remote(location):
        return f"{location.split('://', 1)[0]}://{path}"
    return Path(path)


def list_files(location: Path | str, suffix: str = "", recursive: bool = False) -> list[Path | str]:
    """Files below a folder or prefix whose names end with `suffix`, sorted; hidden names (`.x`, such as a
    temporary file being written) never match. Empty when the folder is absent."""
    import pyarrow.fs as pafs

    return sorted((_same_kind(location, e.path) for e in _entries(location, recursive)
                   if e.type == pafs.FileType.File and e.base_name.endswith(suffix)
                   and not e.base_name.startswith(".")), key=str)


def list_folders(location: Path | str) -> list[Path | str]:
    """The folders (on S3: common prefixes) directly below a folder or prefix, sorted; empty when absent."""
    import pyarrow.fs as pafs

    return sorted((_same_kind(location, e.path) for e in _entries(location, False)
                   if e.type == pafs.FileType.Directory), key=str)


def delete(location: Path | str) -> None:
    """Remove a file, or a folder (an S3 prefix) with everything below it; nothing to do when absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def read_table(location: Path | str, columns: list[str] | None = None, filters: Any = None) -> pa.Table:
    """A Parquet file, or every Parquet file of a folder (hidden names skipped), as an Arrow table; `filters`
    is a pyarrow expression applied while reading."""
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    return pq.read_table(path, filesystem=fs, columns=columns, filters=filters)


def parquet_metadata(location: Path | str) -> Any:
    """A Parquet file's footer (rows, schema, row groups), no data read."""
    import pyarrow.parquet as pq

    fs, path = filesystem(location)
    return pq.read_metadata(path, filesystem=fs)


def write_table(table: pa.Table, location: Path | str, compression: str = "zstd") -> None:
    """Write a Parquet file atomically: readers see the old file or the new one, never half of one.

    Local: a hidden temporary file beside the target, renamed onto it (pipeline.atomic). Remote: the whole file
    is serialised in memory first, then sent as one object (a PUT is atomic on S3; an upload stream that failed
    half-way would otherwise still complete and publish a truncated file). The memory bound is the file's size,
    fine for marts and embedding-cache parts of a single night."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not is_remote(location):
        with atomic_path(Path(location)) as tmp:
            pq.write_table(table, tmp, compression=compression)
        return
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression=compression)
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(buffer.getvalue())


def read_bytes(location: Path | str) -> bytes:
    """A whole file's bytes."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_bytes(location: Path | str, data: bytes) -> None:
    """Write a file atomically (local: a temporary file renamed onto it; remote: one PUT)."""
    if not is_remote(location):
        with atomic_path(Path(location)) as tmp:
            tmp.write_bytes(data)
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as out:
        out.write(data)


def copy_folder(source: Path | str, target: Path | str) -> None:
    """Copy every file below `source` to the same relative path below `target` (either may be remote)."""
    import pyarrow.fs as pafs

    src_fs, src_path = filesystem(source)
    dst_fs, dst_path = filesystem(target)
    for entry in src_fs.get_file_info(pafs.FileSelector(src_path, recursive=True)):
        if entry.type == pafs.FileType.File:
            relative = entry.path[len(src_path.rstrip("/")) + 1:]
            if not is_remote(target):
                Path(dst_path, relative).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(entry.path, f"{dst_path.rstrip('/')}/{relative}", source_filesystem=src_fs,
                            destination_filesystem=dst_fs)


@contextlib.contextmanager
def local_folder(location: Path | str, write_back: bool = False) -> Iterator[Path]:
    """A local folder with the files of `location`: the folder itself when it is local; for a URI, a copy in a
    temporary folder (under the task's scratch folder, pipeline.scratch), copied back to the URI on success
    when `write_back` (new and changed files; nothing is deleted remotely) and removed in any case."""
    if not is_remote(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="folder-") as tmp:
        folder = Path(tmp)
        if exists(location):
            copy_folder(location, folder)
        yield folder
        if write_back:
            copy_folder(folder, location)


@contextlib.contextmanager
def local_files(locations: list[Path | str]) -> Iterator[list[Path]]:
    """Local paths of existing files (absent ones skipped): themselves when local, else copies in a temporary
    folder removed after the block (for libraries that take local paths only, such as MLflow's log_artifact)."""
    with tempfile.TemporaryDirectory(prefix="files-") as tmp:
        found: list[Path] = []
        for location in locations:
            if not exists(location):
                continue
            if is_remote(location):
                copy = Path(tmp) / name_of(location)
                copy.write_bytes(read_bytes(location))
                found.append(copy)
            else:
                found.append(Path(location))
        yield found
