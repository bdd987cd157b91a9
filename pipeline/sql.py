"""Run the project's SQL files (one query per file under sql/) with bound parameters."""

from __future__ import annotations

import functools
import logging
from typing import Any

from pipeline.config import REPO_ROOT

log = logging.getLogger(__name__)

SQL_DIR = REPO_ROOT / "sql"


class GrainCheckError(RuntimeError):
    """A table broke its grain contract (duplicate key, null key, or no rows)."""


@functools.cache
def load_query(name: str) -> str:
    """The text of sql/<name>.sql, e.g. load_query("marts/user_sequences") or load_query("ingest/quarantine")."""
    path = SQL_DIR / f"{name}.sql"
    if not path.is_file():
        raise FileNotFoundError(f"no SQL file {path}")
    return path.read_text(encoding="utf-8")


def bind(name: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The subset of params that sql/<name>.sql uses (DuckDB rejects unused named parameters)."""
    return used_params(load_query(name), params)


def used_params(query: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The subset of params that a query names as `$name` (DuckDB rejects unused named parameters)."""
    return {k: v for k, v in (params or {}).items() if f"${k}" in query}


def relation(con: Any, name: str, params: dict[str, Any] | None = None) -> Any:
    """sql/<name>.sql as a lazy DuckDB relation (chain it, insert it, write it to Parquet)."""
    return con.sql(load_query(name), params=bind(name, params) or None)


def create_table(con: Any, table: str, name: str, params: dict[str, Any] | None = None) -> int:
    """Materialise sql/<name>.sql as a table (replacing it); returns its row count.

    The table name is an identifier chosen by the code (never user input), quoted defensively.
    """
    con.execute(f"drop table if exists {_ident(table)}")
    relation(con, name, params).create(table)
    (count,) = con.execute(f"select count(*) from {_ident(table)}").fetchall()[0]
    return int(count)


def _ident(name: str) -> str:
    """Quote an identifier chosen by the code (table/column names are never user input)."""
    return '"' + name.replace('"', '""') + '"'


def check_grain(con: Any, table: str, keys: list[str], not_null: list[str] | None = None) -> None:
    """Fail loudly unless `table` is non-empty, unique on `keys`, and has no nulls in keys + not_null."""
    ident = _ident(table)
    cols = ", ".join(_ident(k) for k in keys)
    (rows,) = con.execute(f"select count(*) from {ident}").fetchall()[0]
    if rows == 0:
        raise GrainCheckError(f"{table}: no rows")
    dups = con.execute(f"select {cols}, count(*) from {ident} group by all having count(*) > 1 limit 1").fetchall()
    if dups:
        dup = dups[0]
        raise GrainCheckError(f"{table}: key {keys} not unique, e.g. {dup[:-1]} appears {dup[-1]} times")
    for col in keys + (not_null or []):
        (nulls,) = con.execute(f"select count(*) from {ident} where {_ident(col)} is null").fetchall()[0]
        if nulls:
            raise GrainCheckError(f"{table}: column {col!r} has {nulls} null values")
