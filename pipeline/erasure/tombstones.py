"""The warehouse's side of an erasure: the tombstones table (one row per erased user: the keyed hash of the id,
never the id), deleting the users' published rows, and rewriting the storage so deleted values do not linger."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from pipeline import warehouse

ERASED_MARK = "[erased]"  # what replaces an erased user's id in free text


def add_tombstones(path: Path | str, hashes: list[str], requester: str, reason: str, at: dt.datetime) -> int:
    """Record a pending tombstone for each hash that has none yet; returns how many were new."""
    added = 0
    with warehouse.connect(path) as con:
        for user_hash in hashes:
            (known,) = con.execute("select count(*) from tombstones where user_hash = $h", {"h": user_hash}).fetchone()
            if not known:
                con.execute("insert into tombstones (user_hash, requested_at, requester, reason) "
                            "values ($h, $at, $requester, $reason)",
                            {"h": user_hash, "at": at, "requester": requester, "reason": reason})
                added += 1
    return added


def tombstones(path: Path | str) -> list[tuple[str, dt.datetime | None]]:
    """(user_hash, erased_at) of every tombstone; erased_at is None while its erasure is incomplete."""
    with warehouse.connect(path) as con:
        return con.execute("select user_hash, erased_at from tombstones order by requested_at, user_hash").fetchall()


def mark_erased(path: Path | str, hashes: list[str], at: dt.datetime) -> None:
    """Every copy of these users is gone: close their tombstones (the first completion time is kept)."""
    with warehouse.connect(path) as con:
        for user_hash in hashes:
            con.execute("update tombstones set erased_at = $at where user_hash = $h and erased_at is null",
                        {"h": user_hash, "at": at})


def erase_users(path: Path | str, user_ids: list[str]) -> int:
    """Delete the users' published rows and blank their ids in the ledger's free text (a failed stage's message
    may quote one), in one transaction; returns the rows deleted. Run `compact` after it."""
    deleted = 0
    with warehouse.connect(path) as con, con.transaction():
        for user_id in user_ids:
            (n,) = con.execute("select count(*) from recommendations where user_id = $u", {"u": user_id}).fetchone()
            con.execute("delete from recommendations where user_id = $u", {"u": user_id})
            con.execute("update runs set details = replace(details, $u, $mark) where strpos(details, $u) > 0",
                        {"u": user_id, "mark": ERASED_MARK})
            deleted += int(n)
    return deleted


def compact(path: Path | str) -> int:
    """Rebuild the DuckDB file so that deleted values do not linger in its free blocks (a checkpoint or VACUUM
    keeps them): copy every table and view into a fresh file beside it, then rename it over the old one while
    still holding the old file's lock, so no writer can slip in between. Returns the new file's size in bytes.
    On PostgreSQL: VACUUM FULL of the tables erase_users changed (rewritten without dead rows); returns 0."""
    from pipeline.atomic import PendingFile

    if warehouse.is_postgres(path):
        with warehouse.connect(path) as wh:
            wh.execute("vacuum full recommendations, runs")
        return 0
    path = Path(path)

    fresh = PendingFile(path)
    try:
        with warehouse.connect(path) as con:
            con.execute("checkpoint")  # nothing of the old file is left in its write-ahead log
            [(name,)] = con.execute("select current_database()").fetchall()
            con.execute("attach $file as erasure_fresh", {"file": str(fresh.tmp)})
            con.execute(f'copy from database "{name}" to erasure_fresh')  # an identifier, not a value
            con.execute("checkpoint erasure_fresh")
            con.execute("detach erasure_fresh")
            fresh.commit()
    finally:
        fresh.discard()
    return path.stat().st_size
