"""Who is erased: user ids normalised as ingest normalises them, and the keyed hashes that tombstones store.

A tombstone holds sha256(key || user id) in hex, where the key is a per-home secret (64 hex digits in the file
`Catalog.erasure_key`, created by the first `forget`, readable by its owner only). A plain sha256 of short ids such
as "u00042" is reversed by hashing every possible id; without the key file a tombstone cannot be tied to an id.
The key must be backed up with the warehouse: without it the tombstones match nobody, so ingest refuses to run
when tombstones exist and the key is missing. DuckDB computes the same hash in SQL (`sha256($key || user_id)`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

KEY_BYTES = 32


class ErasureKeyError(RuntimeError):
    """Tombstones exist but the key that hashes ids for them is missing or unreadable."""


def normalise(user_id: str) -> str:
    """The id as ingest stores it (surrounding spaces trimmed); an empty id is an error."""
    normalised = user_id.strip(" ")
    if not normalised:
        raise ValueError(f"not a user id: {user_id!r}")
    return normalised


def read_ids(path: Path) -> list[str]:
    """The ids of a file with one id a line (blank lines skipped)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [normalise(line) for line in lines if line.strip(" \t")]


def load_key(path: Path) -> str | None:
    """The home's key, or None before the first erasure."""
    if not path.is_file():
        return None
    key = path.read_text(encoding="ascii").strip()
    if len(key) != 2 * KEY_BYTES:
        raise ErasureKeyError(f"{path}: not an erasure key ({len(key)} characters, expected {2 * KEY_BYTES})")
    return key


def create_key(path: Path) -> str:
    """The home's key, created (mode 0600) when there is none. The key is written whole to a temporary file
    and hard-linked into place, which never replaces an existing key: concurrent callers all get the first one."""
    key = load_key(path)
    if key is not None:
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    pending = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(KEY_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):  # another process created it first: use theirs
            os.link(pending, path)
    finally:
        pending.unlink(missing_ok=True)
    key = load_key(path)
    assert key is not None, f"{path}: the erasure key vanished right after it was created"
    return key


def user_hash(key: str, user_id: str) -> str:
    """The tombstone of a user id: sha256 of the key followed by the id (UTF-8), in hex."""
    return hashlib.sha256((key + user_id).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Screen:
    """The tombstones as ingest and publishing test ids against them: the key and the set of hashes."""

    key: str
    hashes: frozenset[str]

    def __bool__(self) -> bool:
        return bool(self.hashes)

    def matches(self, user_id: str) -> bool:
        return bool(self.hashes) and user_hash(self.key, user_id) in self.hashes

    def keep(self, user_ids: Iterable[str]) -> list[str]:
        """The ids that belong to no tombstone, in order."""
        return [u for u in user_ids if not self.matches(u)]


def screen(key_path: Path, hashes: Iterable[str]) -> Screen:
    """A Screen for the tombstones' hashes; ErasureKeyError when there are some and the key is missing."""
    wanted = frozenset(hashes)
    key = load_key(key_path)
    if wanted and key is None:
        raise ErasureKeyError(f"{len(wanted)} users are erased but the erasure key {key_path} is missing: restore "
                              "it from the backup of this home; without it their rows cannot be recognised")
    return Screen(key or "", wanted)
