"""Tests for the synthetic demo source system (pipeline.tools.demo_data)."""
from __future__ import annotations

import collections
import datetime
import itertools
import json
import pathlib

import pytest

from pipeline.tools.demo_data import DemoConfig, generate

SMALL = DemoConfig(n_users=400, n_items=240, n_topics=6, days=12, seed=3)
NOISY = DemoConfig(n_users=600, n_items=300, n_topics=6, days=15, malformed_rate=0.02,
                   duplicate_rate=0.01, seed=5)
EVENT_TYPES = {"view", "click", "add_to_cart", "purchase", "rating"}
EVENT_KEYS = {"user_id", "item_id", "event_type", "value", "timestamp"}
ITEM_KEYS = {"item_id", "title", "description", "genres", "tags", "brand", "updated_at"}


def _parse_ts(value: object) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None


def _malformed_kind(line: str) -> str | None:
    """Return why an event line is malformed, or None when it is well formed."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return "broken_json"
    if not rec.get("user_id"):
        return "missing_user"
    if not rec.get("item_id"):
        return "missing_item"
    if rec.get("event_type") not in EVENT_TYPES:
        return "unknown_type"
    value = rec.get("value")
    if value is not None and not isinstance(value, (int, float)):
        return "bad_value"
    ts = _parse_ts(rec.get("timestamp"))
    if ts is None:
        return "bad_timestamp"
    if not datetime.datetime(1995, 1, 1) <= ts <= datetime.datetime(2090, 1, 1):
        return "timestamp_out_of_range"
    return None


def _event_files(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted((root / "events").glob("*.jsonl"))


def _clean_events(root: pathlib.Path) -> list[tuple[str, dict]]:
    """(file date, record) for well-formed events, exact duplicate lines dropped."""
    out, seen = [], set()
    for path in _event_files(root):
        for line in path.read_text(encoding="utf-8").splitlines():
            if line in seen or _malformed_kind(line) is not None:
                continue
            seen.add(line)
            out.append((path.stem, json.loads(line)))
    return out


def _tree(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("small")
    return root, generate(root, SMALL)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory: pytest.TempPathFactory) -> tuple[pathlib.Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("noisy")
    return root, generate(root, NOISY)


def test_deterministic(small: tuple[pathlib.Path, dict[str, int]], tmp_path: pathlib.Path) -> None:
    root, counts = small
    assert generate(tmp_path, SMALL) == counts
    assert _tree(tmp_path) == _tree(root)


def test_prefix_stable(tmp_path: pathlib.Path) -> None:
    cfg = DemoConfig(n_users=300, n_items=200, n_topics=5, days=7, seed=11)
    short, long = tmp_path / "short", tmp_path / "long"
    generate(short, cfg)
    generate(long, DemoConfig(**{**cfg.__dict__, "days": 8}))
    short_tree, long_tree = _tree(short), _tree(long)
    assert len(list((short / "events").iterdir())) == 7
    assert len(list((long / "events").iterdir())) == 8
    assert short_tree == {k: v for k, v in long_tree.items() if k in short_tree}
    assert all(k.endswith("2026-10-08.jsonl") for k in set(long_tree) - set(short_tree))


def test_overwrites_but_keeps_other_files(tmp_path: pathlib.Path) -> None:
    cfg = DemoConfig(n_users=50, n_items=40, n_topics=3, days=2, seed=1)
    stray = tmp_path / "events" / "keep-me.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("x")
    (tmp_path / "events" / "2026-10-01.jsonl").write_text("stale\n")
    generate(tmp_path, cfg)
    assert stray.read_text() == "x"
    assert "stale" not in (tmp_path / "events" / "2026-10-01.jsonl").read_text()


def test_schema(small: tuple[pathlib.Path, dict[str, int]]) -> None:
    root, counts = small
    events = _clean_events(root)
    assert len(events) == counts["events"]
    types = collections.Counter(rec["event_type"] for _, rec in events)
    assert types["view"] + types["click"] > 0.7 * len(events) and set(types) == EVENT_TYPES
    for _, rec in events:
        assert set(rec) == EVENT_KEYS
        if rec["event_type"] == "rating":
            assert isinstance(rec["value"], float) and 0.5 <= rec["value"] <= 5.0
        elif rec["event_type"] == "purchase":
            assert rec["value"] in (1, 2, 3)
        else:
            assert rec["value"] is None
    item_files = sorted((root / "items").glob("*.jsonl"))
    assert item_files[0].stem == "2026-10-01"
    for path in item_files:
        lines = path.read_text(encoding="utf-8").splitlines()
        assert lines, "items file written for a day without items"
        for rec in map(json.loads, lines):
            assert set(rec) == ITEM_KEYS and rec["genres"] and rec["tags"] and rec["title"]
            assert rec["updated_at"].startswith(path.stem)


def test_malformed_and_duplicate_rates(noisy: tuple[pathlib.Path, dict[str, int]]) -> None:
    root, counts = noisy
    kinds: collections.Counter[str] = collections.Counter()
    seen, dups = set(), 0
    for path in _event_files(root):
        for line in path.read_text(encoding="utf-8").splitlines():
            kind = _malformed_kind(line)
            if kind is not None:
                kinds[kind] += 1
            elif line in seen:
                dups += 1
            seen.add(line)
    assert sum(kinds.values()) == counts["malformed"] and dups == counts["duplicates"]
    assert 0.5 * NOISY.malformed_rate < counts["malformed"] / counts["events"] < 1.5 * NOISY.malformed_rate
    assert 0.5 * NOISY.duplicate_rate < counts["duplicates"] / counts["events"] < 1.5 * NOISY.duplicate_rate
    assert len(kinds) >= 6, kinds


def test_new_items_only_after_release(small: tuple[pathlib.Path, dict[str, int]]) -> None:
    root, counts = small
    release: dict[str, str] = {}
    for path in sorted((root / "items").glob("*.jsonl")):
        for rec in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
            release.setdefault(rec["item_id"], rec["updated_at"])
    assert len(release) == counts["items"]
    new = {i for i, ts in release.items() if not ts.startswith("2026-10-01")}
    assert len(new) >= 5
    first_seen: dict[str, str] = {}
    for _, rec in _clean_events(root):
        assert rec["item_id"] in release
        assert rec["timestamp"] >= release[rec["item_id"]], rec
        first_seen[rec["item_id"]] = min(first_seen.get(rec["item_id"], "9"), rec["timestamp"])
    assert new & set(first_seen), "no new item was ever interacted with"


def test_per_user_timestamps_strictly_increasing(small: tuple[pathlib.Path, dict[str, int]]) -> None:
    root, _ = small
    last: dict[str, str] = {}
    late = 0
    events = _clean_events(root)
    for day, rec in events:  # files in date order, lines in time order
        ts = rec["timestamp"]
        previous_day = (datetime.date.fromisoformat(day) - datetime.timedelta(days=1)).isoformat()
        assert ts.startswith(day) or ts.startswith(previous_day)
        late += not ts.startswith(day)
        assert ts > last.get(rec["user_id"], ""), rec
        last[rec["user_id"]] = ts
    assert 0 < late < 0.03 * len(events)


def _hit_rates(root: pathlib.Path) -> tuple[float, float]:
    """HR@10 on each user's last event: most-popular vs most-frequent successor of the last item."""
    seqs: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for _, rec in _clean_events(root):
        seqs[rec["user_id"]].append((rec["timestamp"], rec["item_id"]))
    trans: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    pop: collections.Counter[str] = collections.Counter()
    tests = []
    for seq in seqs.values():
        items = [item for _, item in sorted(seq)]
        if len(items) < 3:
            continue
        train = items[:-1]
        tests.append((train[-1], items[-1]))
        pop.update(train)
        for a, b in itertools.pairwise(train):
            trans[a][b] += 1
    top = [item for item, _ in pop.most_common(10)]
    hits_pop = hits_trans = 0
    for last, target in tests:
        cands = [item for item, _ in trans[last].most_common(10)]
        cands += [item for item in top if item not in cands][: 10 - len(cands)]
        hits_pop += target in top
        hits_trans += target in cands
    return hits_pop / len(tests), hits_trans / len(tests)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sequential_structure_is_learnable(tmp_path: pathlib.Path, seed: int) -> None:
    cfg = DemoConfig(n_users=800, n_items=400, n_topics=8, days=20, seed=seed)
    generate(tmp_path, cfg)
    hr_pop, hr_trans = _hit_rates(tmp_path)
    assert hr_trans >= 2.0 * hr_pop and hr_trans >= hr_pop + 0.15, (hr_pop, hr_trans)
