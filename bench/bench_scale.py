"""Scale benchmark (issue 17 item 3): a first night and a warm night on a large synthetic source.

Generates a seeded source with the demo's kind of structure (items in series inside topics, users who follow a
series or browse their topic, Zipf popularity) straight into Parquet landing files, vectorised with numpy and
Arrow so that 50M events take minutes, not hours:
  events/<D-1>.parquet  the history backfill: every day before the first night (one drop, ingested alone)
  events/<D>.parquet    the first night's day;   events/<D+1>.parquet  the warm night's day
  items/<D-1>.parquet   the catalog;  items/<D+1>.parquet  the items released on the warm night's day
Then, in a fresh state home, it ingests the backfill and runs the first night (D) and the warm night (D+1)
stage by stage, each stage a `nightly-recs <stage>` process of its own, and prints every stage's wall time and
peak resident memory (the process's own, from wait4), plus the totals per night.

Settings of the run (besides the defaults): `events_min_volume_ratio = 0` (the backfill is not a normal day, so
the volume check would refuse the first night), `gate_baselines = most_popular` (the generator's series make
item-to-item transitions a strong baseline that a first night's partial epoch does not beat, and without a
champion there is no warm night to measure) and whatever `--setting NAME=VALUE` adds. `recommend` runs as
one process over all users (a deployment would map it over shards on several workers: `make bench-shards`).

Default size: 1,000,000 users x 100,000 items x 50,000,000 events over 60 days (the issue's target; hours on 2
cores). `--users/--items/--events/--days` shrink it. The machine's cores and memory are printed first.
Run: `make bench-scale` (the issue's size; `SCALE_ARGS="--users 100000 ..."` shrinks it).
`python bench/bench_scale.py --help` lists the options.
`--keep HOME` keeps the state home; `--warm-only --keep COPY` runs the warm night again on a copy of a home
taken after its first night (same source, same first night), to measure a change to the warm night alone.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parent.parent
FIRST_NIGHT = dt.date(2026, 6, 1)
SERIES_LEN = 6          # items per series
CONTINUE = 0.55         # next event: the next item of the series just consumed
IN_TOPIC = 0.35         # ... else an item of the user's topic (Zipf within the topic); else a global popular item
SESSION_MEAN = 4.0      # events per active user and day (1 + Poisson)
TOPICS = 200
WORDS = [f"w{i}" for i in range(2000)]


def _ids(prefix: str, values: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pa.array(values, type=pa.int64()).cast(pa.string()), "")


def _zipf_choice(rng: np.random.Generator, n: int, size: int, exponent: float = 1.0) -> np.ndarray:
    """Ranks 0..n-1 with P(r) ~ (r + 1)^-exponent (inverse CDF on a precomputed table)."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    return np.searchsorted(cdf, rng.random(size) * cdf[-1]).clip(0, n - 1)


class Source:
    """The synthetic universe: item topics and series, user topics and activity."""

    def __init__(self, users: int, items: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.users, self.items = users, items
        n_series = -(-items // SERIES_LEN)
        self.topics = max(1, min(TOPICS, n_series // 5))
        series_topic = rng.permutation(n_series) % self.topics  # every topic holds series
        self.item_topic = series_topic[np.arange(items) // SERIES_LEN]
        order = np.argsort(self.item_topic, kind="stable")  # items of a topic are contiguous in `order`
        self.topic_items = np.split(order, np.cumsum(np.bincount(self.item_topic, minlength=self.topics))[:-1])
        self.next_item = np.arange(1, items + 1)
        self.next_item[SERIES_LEN - 1 :: SERIES_LEN] = -1  # the last volume of a series has no next
        self.next_item[-1] = -1
        self.user_topic = _zipf_choice(rng, self.topics, users, 0.6)
        self.p_active = rng.beta(1.2, 8.0, users)  # heterogeneous daily activity
        self.release = np.where(rng.random(items) < 0.01, 1, 0)  # 1%: released on the warm night's day

    def day(self, rng: np.random.Generator, day_start: int, last: np.ndarray, released: bool,
            scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One day's (users, items, unix seconds); `last` (per user, -1 = none) is updated in place."""
        active = np.flatnonzero(rng.random(self.users) < self.p_active * scale)
        lengths = 1 + rng.poisson(SESSION_MEAN - 1, len(active))
        allowed = np.ones(self.items, dtype=bool) if released else self.release == 0
        ev_u, ev_i, ev_t = [], [], []
        start = day_start + rng.integers(0, 80_000, len(active))
        for step in range(int(lengths.max(initial=0))):
            live = lengths > step
            users = active[live]
            prev = last[users]
            draw = rng.random(len(users))
            nxt = np.where(prev >= 0, self.next_item[np.maximum(prev, 0)], -1)
            item = np.where((draw < CONTINUE) & (nxt >= 0), nxt, -1)
            topic_pick = (item < 0) & (draw < CONTINUE + IN_TOPIC)
            for topic in np.unique(self.user_topic[users[topic_pick]]):
                rows = np.flatnonzero(topic_pick & (self.user_topic[users] == topic))
                pool = self.topic_items[topic]
                item[rows] = pool[_zipf_choice(rng, len(pool), len(rows))]
            rest = item < 0
            item[rest] = _zipf_choice(rng, self.items, int(rest.sum()), 0.9)
            item = np.where(allowed[item], item, np.where(prev >= 0, prev, 0))  # unreleased: repeat instead
            last[users] = item
            ev_u.append(users)
            ev_i.append(item)
            ev_t.append(start[live] + step * 60)
        return np.concatenate(ev_u), np.concatenate(ev_i), np.concatenate(ev_t)

    def catalog(self, rng: np.random.Generator, which: np.ndarray) -> pa.Table:
        topic = self.item_topic[which]
        words = np.array(WORDS)[rng.integers(0, len(WORDS), (len(which), 6))]
        title = pc.binary_join_element_wise(_ids("Series ", which // SERIES_LEN), " vol. ",
                                            pa.array(which % SERIES_LEN + 1).cast(pa.string()), "")
        desc = [" ".join(row) for row in words.tolist()]
        return pa.table({"item_id": _ids("i", which), "title": title, "description": pa.array(desc),
                         "genres": pa.array([[f"topic{t}"] for t in topic.tolist()]),
                         "updated_at": pa.array([f"{FIRST_NIGHT - dt.timedelta(days=1)}T00:00:00Z"] * len(which))})


def _events_table(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> pa.Table:
    stamps = pc.strftime(pa.array(ts * 1_000_000, type=pa.timestamp("us")), format="%Y-%m-%dT%H:%M:%SZ")
    n = len(users)
    return pa.table({"user_id": _ids("u", users), "item_id": _ids("i", items),
                     "event_type": pa.array(np.full(n, "view")), "value": pa.nulls(n, pa.string()),
                     "timestamp": stamps})


def generate(landing: Path, users: int, items: int, events: int, days: int, seed: int) -> dict[str, int]:
    """Write the landing files; returns the event count per drop."""
    src = Source(users, items, seed)
    rng = np.random.default_rng([seed, 1])
    expected = SESSION_MEAN * src.p_active.sum()  # events per day at scale 1
    scale = events / days / expected
    last = np.full(users, -1, dtype=np.int64)
    (landing / "events").mkdir(parents=True, exist_ok=True)
    (landing / "items").mkdir(parents=True, exist_ok=True)
    epoch = (FIRST_NIGHT - dt.date(1970, 1, 1)).days
    counts: dict[str, int] = {}
    backfill = FIRST_NIGHT - dt.timedelta(days=1)
    schema = _events_table(*(np.zeros(0, np.int64),) * 3).schema
    with pq.ParquetWriter(landing / "events" / f"{backfill}.parquet", schema) as w:
        for d in range(days - 2):
            u, i, t = src.day(rng, (epoch - (days - 2) + d) * 86400, last, False, scale)
            w.write_table(_events_table(u, i, t))
            counts[str(backfill)] = counts.get(str(backfill), 0) + len(u)
    for d, day in enumerate((FIRST_NIGHT, FIRST_NIGHT + dt.timedelta(days=1))):
        u, i, t = src.day(rng, (epoch + d) * 86400, last, d == 1, scale)
        pq.write_table(_events_table(u, i, t), landing / "events" / f"{day}.parquet")
        counts[str(day)] = len(u)
    pq.write_table(src.catalog(rng, np.flatnonzero(src.release == 0)), landing / "items" / f"{backfill}.parquet")
    new = src.catalog(rng, np.flatnonzero(src.release == 1))
    new = new.set_column(4, "updated_at", pa.array([f"{FIRST_NIGHT + dt.timedelta(days=1)}T00:00:00Z"] * new.num_rows))
    pq.write_table(new, landing / "items" / f"{FIRST_NIGHT + dt.timedelta(days=1)}.parquet")
    return counts


def run_stage(env: dict[str, str], args: list[str], log: Path) -> tuple[float, float, dict]:
    """One `nightly-recs` command in a process of its own: (wall s, peak RSS GiB, its printed JSON)."""
    start = time.perf_counter()
    with log.open("a") as fh:
        fh.write(f"$ nightly-recs {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.Popen([sys.executable, "-m", "pipeline.tools.cli", *args], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=fh, text=True)
        out = proc.stdout.read() if proc.stdout else ""
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"nightly-recs {' '.join(args)} failed ({proc.returncode}); see {log}")
    try:
        result = json.loads(out)
    except json.JSONDecodeError:
        result = {}
    return seconds, usage.ru_maxrss / 2**20, result


NIGHT = ["ingest", "features", "embed", "train", "register", "select", "recommend", "publish", "housekeeping"]


def night(env: dict[str, str], day: dt.date, log: Path) -> list[tuple[str, float, float]]:
    rows = []
    for stage in NIGHT:
        seconds, gib, result = run_stage(env, [stage, "--date", day.isoformat()], log)
        rows.append((stage, seconds, gib))
        flat = {**{k: v for part in result.values() if isinstance(part, dict) for k, v in part.items()}, **result}
        detail = {k: flat[k] for k in ("accepted", "quarantined", "encoded", "epochs", "train_seconds",
                                       "n_train_sequences", "incremental_since", "promoted", "users", "rows")
                  if k in flat and not isinstance(flat[k], dict | list)}
        print(f"  {stage:<13} {seconds:>9.1f} s {gib:>8.2f} GiB  {json.dumps(detail)}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=50_000_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="state home to use and keep (default: a temp one)")
    parser.add_argument("--setting", action="append", default=[], help="NAME=VALUE, a setting for both nights")
    parser.add_argument("--warm-only", action="store_true",
                        help="with --keep: reuse its source and first night (a copy of an earlier run's home taken "
                             "after its first night) and run the warm night alone")
    args = parser.parse_args()
    if args.warm_only and args.keep is None:
        parser.error("--warm-only needs --keep HOME")
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(f"scale: {args.users:,} users x {args.items:,} items, {args.events:,} events over {args.days} days; "
          f"{os.cpu_count()} cores, {mem:.0f} GiB", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        home = args.keep or Path(tmp)
        home.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        if args.warm_only:
            counts = {f.stem: pq.ParquetFile(f).metadata.num_rows for f in (home / "landing" / "events").iterdir()}
        else:
            counts = generate(home / "landing", args.users, args.items, args.events, args.days, args.seed)
            print(f"generated in {time.perf_counter() - t0:.0f} s: {counts}", flush=True)
        env = {**os.environ, "NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_EVENTS_MIN_VOLUME_RATIO": "0",
               "NIGHTLY_RECS_GATE_BASELINES": "most_popular"}
        for item in args.setting:
            name, _, value = item.partition("=")
            env[f"NIGHTLY_RECS_{name.upper()}"] = value
        log = home / "bench-scale.log"
        backfill = FIRST_NIGHT - dt.timedelta(days=1)
        nights = [("first night", FIRST_NIGHT), ("warm night", FIRST_NIGHT + dt.timedelta(days=1))]
        if args.warm_only:
            nights = nights[1:]
        else:
            seconds, gib, _ = run_stage(env, ["ingest", "--date", backfill.isoformat()], log)
            print(f"backfill ingest ({counts[str(backfill)]:,} events): {seconds:.1f} s, {gib:.2f} GiB", flush=True)
        for title, day in nights:
            print(f"{title} {day} ({counts[str(day)]:,} new events):", flush=True)
            rows = night(env, day, log)
            print(f"  {'total':<13} {sum(r[1] for r in rows):>9.1f} s {max(r[2] for r in rows):>8.2f} GiB peak",
                  flush=True)


if __name__ == "__main__":
    main()
