"""Noise of the demo source: malformed lines of several kinds and verbatim duplicates."""

from __future__ import annotations

import json

import numpy as np

MALFORMED_KINDS = ("not_a_date", "impossible_date", "missing_user", "missing_item", "truncated",
                   "future", "ancient", "unknown_type", "bad_value")


def _corrupt(rng: np.random.Generator, line: str, kind: str) -> str:
    if kind == "truncated":
        return line[: int(rng.integers(5, len(line) - 1))]
    rec = json.loads(line)
    if kind in ("missing_user", "missing_item"):
        key = "user_id" if kind == "missing_user" else "item_id"
        if rng.random() < 0.5:
            del rec[key]
        else:
            rec[key] = ""
    elif kind in ("future", "ancient"):
        year = int(rng.integers(2090, 2200) if kind == "future" else rng.integers(1970, 1995))
        rec["timestamp"] = f"{year}{rec['timestamp'][4:]}"
    else:
        field, bad = {"not_a_date": ("timestamp", "not-a-date"),
                      "impossible_date": ("timestamp", "2026-13-45T99:00:00Z"),
                      "unknown_type": ("event_type", "hover"), "bad_value": ("value", "abc")}[kind]
        rec[field] = bad
    return json.dumps(rec)


def inject_noise(rng: np.random.Generator, lines: list[str], malformed_rate: float, duplicate_rate: float
                 ) -> tuple[list[str], int, int]:
    n = len(lines)
    if n < 2:
        return lines, 0, 0
    extras: list[list[str]] = [[] for _ in range(n)]
    n_dup, n_bad = int(rng.binomial(n, duplicate_rate)), int(rng.binomial(n, malformed_rate))
    for src, off in zip(rng.integers(0, n, n_dup).tolist(), rng.integers(0, 4, n_dup).tolist(), strict=True):
        extras[min(src + off, n - 1)].append(lines[src])
    srcs, positions = rng.integers(0, n, n_bad).tolist(), rng.integers(0, n, n_bad).tolist()
    kinds = rng.integers(0, len(MALFORMED_KINDS), n_bad).tolist()
    for src, pos, k in zip(srcs, positions, kinds, strict=True):
        extras[pos].append(_corrupt(rng, lines[src], MALFORMED_KINDS[k]))
    out = [x for line, extra in zip(lines, extras, strict=True) for x in (line, *extra)]
    return out, n_dup, n_bad
