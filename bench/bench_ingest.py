"""Ingest benchmark: generate N JSONL event rows (numpy + Arrow, in a temp folder), ingest them, report speed.

Usage: .venv/bin/python bench/bench_ingest.py [--rows 10000000] [--files 1] [--keep DIR]

The rows belong to one data date (the hardest case: deduplication spans all of them) and include 0.1%
malformed lines and 0.1% exact duplicates. Generation runs in a child process, so the peak RSS printed is the
ingest's own (plus imports). Prints rows/s on wall-clock time and per CPU-second (the machine may be shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

DAY = dt.date(2026, 11, 21)
CHUNK_ROWS = 1_000_000
N_USERS, N_ITEMS = 1_000_000, 100_000
EVENT_TYPES = ["view", "click", "add_to_cart", "purchase", "rating"]
BAD_LINES = ['{"user_id":"u1","item_id":"i2","event_type":"view","timestamp":"2026-11-',   # truncated
             '{"user_id":"u1","item_id":"i2","event_type":"hover","timestamp":"2026-11-21T10:00:00Z"}',
             '{"user_id":"u1","item_id":"i2","event_type":"view","timestamp":"yesterday"}',
             '{"user_id":"","item_id":"i2","event_type":"view","timestamp":"2026-11-21T10:00:00Z"}']


def _vocab(prefix: str, n: int) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(np.arange(n)), pa.string()), "")


def generate(folder: Path, rows: int, files: int, seed: int = 0) -> int:
    """Write `rows` event lines for DAY into `files` JSONL files; returns bytes written."""
    rng = np.random.default_rng(seed)
    users, items = _vocab("u", N_USERS), _vocab("i", N_ITEMS)
    midnight = int(dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC).timestamp())
    seconds = pa.array((midnight + np.arange(86_400)) * 1_000_000, pa.timestamp("us", tz="UTC"))
    stamps = pc.strftime(seconds, "%Y-%m-%dT%H:%M:%SZ")
    types = pa.array(EVENT_TYPES)
    values = pa.array(["null", "1", "2", "3", "4", "5"])
    bad = pa.array(BAD_LINES)
    written = 0
    per_file = -(-rows // files)
    for f in range(files):
        with (folder / f"{DAY.isoformat()}-part{f:02d}.jsonl").open("wb") as fh:
            for start in range(f * per_file, min(rows, (f + 1) * per_file), CHUNK_ROWS):
                n = min(CHUNK_ROWS, rows - start, (f + 1) * per_file - start)
                lines = _chunk(rng, n, users, items, stamps, types, values, bad)
                offsets = np.frombuffer(lines.buffers()[1], np.int32)
                first, last = offsets[lines.offset], offsets[lines.offset + len(lines)]
                fh.write(memoryview(lines.buffers()[2])[first:last])
                written += int(last - first)
    return written


def _chunk(rng: np.random.Generator, n: int, users: pa.Array, items: pa.Array, stamps: pa.Array,
           types: pa.Array, values: pa.Array, bad: pa.Array) -> pa.Array:
    """n lines ending in newlines: ~0.1% malformed, ~0.1% repeats of earlier lines of the chunk."""
    kind = rng.choice(len(EVENT_TYPES), n, p=[0.6, 0.25, 0.07, 0.04, 0.04])
    value = np.where(kind == 4, rng.integers(1, 6, n), 0)
    lines = pc.binary_join_element_wise(
        '{"user_id":"', users.take(rng.integers(0, N_USERS, n)),
        '","item_id":"', items.take(rng.integers(0, N_ITEMS, n)),
        '","event_type":"', types.take(kind), '","value":', values.take(value),
        ',"timestamp":"', stamps.take(rng.integers(0, len(stamps), n)), '"}', "")
    pick = np.arange(n)
    repeats = rng.random(n) < 0.001
    pick[repeats] = rng.integers(0, n, int(repeats.sum()))
    lines = lines.take(pick)
    malformed = rng.random(n) < 0.001
    lines = pc.if_else(pa.array(malformed), bad.take(rng.integers(0, len(bad), n)), lines)
    return pc.binary_join_element_wise(lines, "\n", "")


def run_ingest(home: Path) -> dict:
    from pipeline.config import load_settings
    from pipeline.ingest import ingest

    settings = load_settings(home=home)
    start_wall, start_cpu = time.perf_counter(), _cpu_seconds()
    summary = ingest(settings, DAY)
    return {"wall_s": time.perf_counter() - start_wall, "cpu_s": _cpu_seconds() - start_cpu,
            "events": summary["events"]}


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--keep", type=Path, help="use (and keep) this folder instead of a temp folder")
    parser.add_argument("--generate-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate_only:
        print(generate(args.generate_only, args.rows, args.files))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        home = args.keep or Path(tmp)
        landing = home / "landing" / "events"
        landing.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--rows", str(args.rows), "--files", str(args.files),
                              "--generate-only", str(landing)], check=True, capture_output=True, text=True)
        size = int(out.stdout.strip())
        print(f"generated {args.rows:,} rows in {args.files} file(s), {size / 1e9:.2f} GB, "
              f"in {time.perf_counter() - started:.1f} s; load average {os.getloadavg()[0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        result = run_ingest(home)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rows = result["events"]["rows_read"]
    print(f"ingest: {rows:,} rows in {result['wall_s']:.1f} s = {rows / result['wall_s'] / 1e6:.2f} M rows/s "
          f"(wall); {result['cpu_s']:.1f} CPU-s = {rows / result['cpu_s'] / 1e6:.2f} M rows per CPU-second")
    print(f"peak RSS: {peak_mib:,.0f} MiB")
    print("counts:", json.dumps({k: v for k, v in result["events"].items() if k != "status"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
