"""Scoring in shards: how many, which users each scores, and the parts they stage put back together.

Above `score_shard_users` active users the night's scoring fans out (Airflow dynamic task mapping in the DAG,
a loop in `stages.run_night`): shard i of n scores a contiguous range of the night's scoring users (their
order in `recsys.score.scoring_input`, so every shard sees the same list) and stages its own part; publish
reads every part, checks that each shard is there exactly once, and validates and publishes the union in one
atomic step, as it does the single table of an unsharded night.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

    from pipeline.recsys.score import ScoringInput


class ShardPartsError(ValueError):
    """The staged parts do not make up every shard exactly once."""


def shard_count(active_users: int, shard_users: int, max_shards: int) -> int:
    """1 up to shard_users active users, else ceil(users / shard_users), at most max_shards."""
    if active_users <= shard_users:
        return 1
    return min(max_shards, math.ceil(active_users / shard_users))


def plan(active_users: int, shard_users: int, max_shards: int) -> list[dict[str, int]]:
    """The mapped scoring tasks' arguments: [{"shard": i, "of": n}, ...]."""
    n = shard_count(active_users, shard_users, max_shards)
    return [{"shard": i, "of": n} for i in range(n)]


def user_range(n_users: int, shard: int, of: int) -> tuple[int, int]:
    """[start, end) of shard `shard` of `of` over n_users users: contiguous, covering, sizes differing by <= 1."""
    if not 0 <= shard < of:
        raise ValueError(f"shard {shard} of {of} does not exist")
    return n_users * shard // of, n_users * (shard + 1) // of


def take(data: ScoringInput, shard: int, of: int) -> ScoringInput:
    """The scoring input of one shard: its users, their histories and seen items; catalog and popularity whole."""
    start, end = user_range(len(data.user_ids), shard, of)
    return dataclasses.replace(data, user_ids=data.user_ids[start:end], histories=data.histories[start:end],
                               seen=data.seen[start:end])


def combine(parts: list[dict[str, Any]], read: Any) -> pa.Table:
    """One table from the recommend results of every shard (each with staged, shard, of, model_version):
    refused unless each of the n shards is there exactly once and all scored with the same model version."""
    import pyarrow as pa

    of = {int(p.get("of", 1)) for p in parts}
    shards = sorted(int(p.get("shard", 0)) for p in parts)
    if len(of) != 1 or shards != list(range(next(iter(of)))):
        raise ShardPartsError(f"staged parts {shards} of {sorted(of)} shards: every shard must be there once")
    versions = {p.get("model_version") for p in parts}
    if len(versions) != 1:
        raise ShardPartsError(f"staged parts scored with different model versions {sorted(map(str, versions))}")
    tables = [read(p["staged"]) for p in sorted(parts, key=lambda p: int(p.get("shard", 0)))]
    return pa.concat_tables(tables, promote_options="default")
