"""Object storage: locations are local folders or `s3://bucket/prefix` URIs on any S3-compatible store.

Credentials and the endpoint come from the standard AWS environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_DEFAULT_REGION / AWS_REGION, AWS_ENDPOINT_URL for a store other than AWS) or from an
Airflow connection (setting `aws_conn_id`: every DAG task exports it into the same variables first, see
`use_airflow_connection`). pyarrow's S3
filesystem reads and writes Parquet; Delta Lake (pipeline.lake) gets the same settings as storage options; DuckDB
reads through pyarrow registered as an fsspec filesystem (DuckDB's own httpfs extension cannot be installed).
"""

from __future__ import annotations

import atexit
import functools
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def register_filesystems(con: Any) -> None:
    """Let a DuckDB connection read and write s3:// paths (through pyarrow's S3 filesystem)."""
    from fsspec.implementations.arrow import ArrowFSWrapper

    class S3(ArrowFSWrapper):
        protocol = ("s3", "s3a")

    con.register_filesystem(S3(_s3()))
