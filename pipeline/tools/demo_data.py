"""Seeded synthetic "source system" that writes landing files for the nightly-recs demo.

Files under ``landing_dir`` (existing files of the same name are overwritten, others kept):
  events/YYYY-MM-DD.jsonl  one drop per data day: user interactions, time ordered
  items/YYYY-MM-DD.jsonl   catalog drops: day 1 = full initial catalog, later = releases + updates

Learnable structure:
- Catalog: ``n_topics`` topics with ~20-word vocabularies. Items form series ("Name: Vol. k",
  1-10 volumes) inside one topic. Titles, descriptions (topic words + shared filler), genres
  (topic names) and tags (topic words) let a text encoder separate topics and place new items.
- Zipf-like popularity: topic weight ~ rank^-0.6, series weight within its topic ~ rank^-1,
  decaying 0.8x per volume.
- Users: 1-3 latent topics with Dirichlet weights; each day a user's mix shifts with prob. 1.5%
  (one topic replaced). Heterogeneous daily activity; ~20% of users join after day 1.
- Sequences: each user has up to 4 open series (the last series read, most recent first). Within a
  session the next item continues one of them, chosen uniformly (p=0.6: the next volume of a series
  read earlier, not necessarily the last one, so a first-order chain over the last item cannot tell
  which), another item of the previous item's topic (0.15), an item from one of the user's topics
  (0.15) or a globally popular item (0.1, noise). A day's first event often returns to an open series
  after the gap (0.4). Items the user already consumed are avoided (resampled).
- ~15% of items are released after day 1 (mostly later volumes of existing series, some whole
  new series) over a fixed 60-day horizon; they get interactions from the day after release.
- Noise: ~1% of sessions arrive late (timestamps on D-1, in D's file), malformed lines of
  several kinds (~malformed_rate), verbatim duplicate lines (~duplicate_rate).

Determinism and prefix stability: the universe (catalog, series, release days, users) comes
from an RNG seeded by (seed, n_users, n_items, n_topics) only; the simulation consumes one
RNG stream day by day, so ``days=N+1`` reproduces the files of the first N days byte for byte.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import pathlib

import numpy as np

from pipeline.catalog import landing_path
from pipeline.tools.demo_noise import inject_noise
from pipeline.tools.demo_vocab import BRAND_SUFFIXES, FILLER, SYLLABLES, TITLE_STYLES, TOPIC_VOCAB

logger = logging.getLogger(__name__)

HORIZON_DAYS = 60  # item releases and user joins are spread over this fixed horizon (not `days`)
LATE_ITEM_FRACTION = 0.15
LATE_USER_FRACTION = 0.2
DRIFT_RATE = 0.015  # per user and day
LATE_SESSION_RATE = 0.01
UPDATE_RATE = 0.005 / 7  # per released item and day
MAX_SESSION = 60
MODES_IN_SESSION = (0.60, 0.15, 0.15, 0.10)  # continue an open series, same topic, user topic, popular
MODES_AT_START = (0.40, 0.05, 0.40, 0.15)
THREADS = 4  # series a user has open at once: the next volume may continue any of them, not only the last
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
EVENT_PROBS = (0.58, 0.26, 0.07, 0.04, 0.05)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    n_users: int = 3000  # users in the universe (some join after day 1)
    n_items: int = 1500  # total items over the whole period (some released on later days)
    n_topics: int = 12  # latent topics (genres); the first 12 have real-word vocabularies
    start_date: datetime.date = datetime.date(2026, 10, 1)  # data date of the first drop
    days: int = 60  # number of daily drops to write
    events_per_user_day: float = 1.1  # mean events per joined user per day (incl. idle days)
    malformed_rate: float = 0.005  # malformed lines per well-formed event line
    duplicate_rate: float = 0.003  # verbatim duplicate lines per well-formed event line
    seed: int = 7  # seed for the universe and the daily simulation


@dataclasses.dataclass
class _Universe:
    topic_names: list[str]
    vocab: list[list[str]]
    item_topic: np.ndarray  # topic per item
    next_item: np.ndarray  # next volume of the same series, -1 if none
    popularity: np.ndarray  # unnormalised popularity weight
    quality: np.ndarray  # shifts ratings
    release_day: np.ndarray  # day offset of the item's first catalog drop
    records: list[dict]  # catalog record per item (without updated_at)
    user_join: np.ndarray
    user_p_active: np.ndarray
    user_intensity: np.ndarray  # mean-1 multiplier of events per day
    user_topics: np.ndarray  # (n_users, 3) topic ids
    user_weights: np.ndarray  # (n_users, 3) weights, 0 for unused slots


def _topics(n_topics: int, rng: np.random.Generator) -> tuple[list[str], list[list[str]]]:
    names = list(TOPIC_VOCAB)[:n_topics]
    vocab = [TOPIC_VOCAB[n].split() for n in names]
    while len(names) < n_topics:  # beyond the built-in list: pseudo-word vocabularies
        words = ["".join(rng.choice(SYLLABLES, int(rng.integers(2, 4)))) for _ in range(20)]
        names.append(f"{words[0]}-{len(names)}")
        vocab.append(words)
    return names, vocab


def _description(rng: np.random.Generator, words: list[str], lead: str) -> str:
    n = int(rng.integers(10, 16))
    picks = np.where(rng.random(n) < 0.6, rng.choice(words, n), rng.choice(FILLER, n))
    return f"{lead} " + " ".join(picks.tolist()).capitalize() + "."


def _series_lengths(rng: np.random.Generator, n_items: int) -> list[int]:
    lengths: list[int] = []
    total = 0
    while total < n_items:
        lengths.append(min(int(rng.geometric(0.3)), 10, n_items - total))
        total += lengths[-1]
    return lengths


def _release_days(rng: np.random.Generator, lengths: list[int], series_topic: np.ndarray,
                  n_topics: int) -> list[np.ndarray]:
    days = [np.zeros(n, dtype=np.int64) for n in lengths]
    initial = np.bincount(series_topic, weights=lengths, minlength=n_topics)
    late, target = 0, round(LATE_ITEM_FRACTION * sum(lengths))
    for s in rng.permutation(len(lengths)):
        if late >= target:
            break
        cut = int(rng.integers(0, lengths[s]))  # volumes cut.. are released later
        n_late = lengths[s] - cut
        if initial[series_topic[s]] - n_late < 1:
            continue
        days[s][cut:] = np.sort(rng.integers(1, HORIZON_DAYS, n_late))
        initial[series_topic[s]] -= n_late
        late += n_late
    return days


def _series_meta(rng: np.random.Generator, names: list[str], words: list[str], t: int) -> tuple:
    a, b = rng.choice(len(words), 2, replace=False)
    genres = [names[t]] + ([names[int(rng.integers(len(names)))]] if rng.random() < 0.1 else [])
    return (f"{words[a].capitalize()} {words[b].capitalize()}", list(dict.fromkeys(genres)),
            f"{str(rng.choice(words)).capitalize()} {rng.choice(BRAND_SUFFIXES)}",
            TITLE_STYLES[int(rng.integers(len(TITLE_STYLES)))])


def _build_catalog(rng: np.random.Generator, cfg: DemoConfig, names: list[str], vocab: list[list[str]],
                   topic_w: np.ndarray) -> tuple[list[dict], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Series of items per topic; returns (records, topic, next volume, popularity, release day)."""
    lengths = _series_lengths(rng, cfg.n_items)
    series_topic = rng.permutation(np.arange(len(lengths)) % cfg.n_topics)
    series_w = np.empty(len(lengths))
    for t in range(cfg.n_topics):
        idx = np.flatnonzero(series_topic == t)
        w = (rng.permutation(len(idx)) + 1.0) ** -1.0
        series_w[idx] = topic_w[t] * w / w.sum()
    release = _release_days(rng, lengths, series_topic, cfg.n_topics)
    # ids increase with release day (new items get new ids), random order within a day
    flat = [(int(release[s][k]), s, k) for s in range(len(lengths)) for k in range(lengths[s])]
    keys = rng.random(len(flat))
    order = sorted(range(len(flat)), key=lambda j: (flat[j][0], keys[j]))
    item_of = {flat[j][1:]: i for i, j in enumerate(order)}
    meta = [_series_meta(rng, names, vocab[t], t) for t in series_topic.tolist()]
    width = max(5, len(str(cfg.n_items)))
    records, rows = [], []
    for j in order:
        day, s, k = flat[j]
        (name, genres, brand, style), t = meta[s], int(series_topic[s])
        single = lengths[s] == 1
        lead = f"A standalone {names[t]} title." if single else f"Volume {k + 1} of the {name} series."
        records.append({"item_id": f"i{item_of[(s, k)]:0{width}d}",
                        "title": name if single else style.format(name=name, k=k + 1),
                        "description": _description(rng, vocab[t], lead), "genres": genres,
                        "tags": sorted({str(w) for w in rng.choice(vocab[t], 3)}), "brand": brand})
        rows.append((t, item_of[(s, k + 1)] if k + 1 < lengths[s] else -1, series_w[s] * 0.8**k, day))
    topic, nxt, pop, rel = (np.array(col) for col in zip(*rows, strict=True))
    return records, topic, nxt, pop, rel


def _build_universe(cfg: DemoConfig) -> _Universe:
    rng = np.random.default_rng([cfg.seed, cfg.n_users, cfg.n_items, cfg.n_topics, 1])
    names, vocab = _topics(cfg.n_topics, rng)
    topic_w = (rng.permutation(cfg.n_topics) + 1.0) ** -0.6
    records, topic, nxt, pop, rel = _build_catalog(rng, cfg, names, vocab, topic_w)
    n_u = cfg.n_users
    join = np.where(rng.random(n_u) < LATE_USER_FRACTION, rng.integers(1, HORIZON_DAYS, n_u), 0)
    intensity = rng.lognormal(0.0, 0.5, n_u) / np.exp(0.125)
    gumbel = np.log(topic_w / topic_w.sum()) + rng.gumbel(size=(n_u, cfg.n_topics))
    user_topics = np.argsort(-gumbel, axis=1)[:, np.arange(3) % cfg.n_topics]  # 3 distinct if possible
    weights = rng.dirichlet(np.ones(3), n_u) * (np.arange(3) < rng.integers(1, 4, n_u)[:, None])
    return _Universe(names, vocab, topic, nxt, pop, rng.normal(0.0, 0.5, cfg.n_items), rel, records,
                     join, np.clip(rng.beta(1.5, 3.5, n_u), 0.04, 0.9), intensity, user_topics,
                     weights / weights.sum(axis=1, keepdims=True))


class _Sampler:
    """Popularity-weighted sampling among available items, globally or within given topics."""

    def __init__(self, uni: _Universe, avail: np.ndarray) -> None:
        w = uni.popularity * avail
        self.avail = avail
        self.order = np.argsort(uni.item_topic, kind="stable")
        t_sorted, w_sorted = uni.item_topic[self.order], w[self.order]
        cum = np.cumsum(w_sorted)
        total = np.bincount(t_sorted, w_sorted, minlength=len(uni.topic_names))
        before = (cum - w_sorted)[np.searchsorted(t_sorted, np.arange(len(total)))
                                  .clip(max=len(cum) - 1)]
        within = cum - before[t_sorted]
        share = np.where(within >= total[t_sorted] * (1 - 1e-12), 1.0,
                         within / np.maximum(total[t_sorted], 1e-300))
        self.topic_cum = t_sorted + share
        self.global_cum = np.cumsum(w)

    def in_topic(self, rng: np.random.Generator, topics: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.topic_cum, topics + rng.random(len(topics)), side="right")
        return self.order[idx.clip(max=len(self.order) - 1)]

    def popular(self, rng: np.random.Generator, n: int) -> np.ndarray:
        x = rng.random(n) * self.global_cum[-1]
        return np.searchsorted(self.global_cum, x, side="right").clip(max=len(self.global_cum) - 1)


@dataclasses.dataclass
class _State:
    last_item: np.ndarray
    last_ts: np.ndarray
    seen: np.ndarray  # (n_users, n_items) bool
    user_topics: np.ndarray
    threads: np.ndarray  # (n_users, THREADS) last item of each open series, most recent first, -1 = none


def _thread_next(rng: np.random.Generator, st: _State, uni: _Universe, smp: _Sampler,
                 users: np.ndarray) -> np.ndarray:
    """The next volume of one of the user's open series (uniformly among those still to read), -1 if none.

    Interleaved series are what a first-order chain cannot capture: after volume 2 of A and volume 5 of B,
    volume 3 of A is as likely as volume 6 of B, and only the history says A is open."""
    open_ = st.threads[users]  # (U, T)
    nxt = np.where(open_ >= 0, uni.next_item[open_.clip(min=0)], -1)
    ok = (nxt >= 0) & smp.avail[nxt.clip(min=0)] & ~st.seen[users[:, None], nxt.clip(min=0)]
    pick = np.argmax(np.where(ok, rng.random(ok.shape), -1.0), axis=1)
    return np.where(ok.any(axis=1), nxt[np.arange(len(users)), pick], -1)


def _update_threads(st: _State, uni: _Universe, users: np.ndarray, items: np.ndarray) -> None:
    """Move the thread an item continues to the front (or open a new one, closing the oldest)."""
    open_ = st.threads[users]
    continues = (open_ >= 0) & (uni.next_item[open_.clip(min=0)] == items[:, None])
    keep = (open_ >= 0) & ~continues
    order = np.argsort(~keep, axis=1, kind="stable")  # kept threads first, in their order
    rest = np.where(np.take_along_axis(keep, order, axis=1), np.take_along_axis(open_, order, axis=1), -1)
    st.threads[users] = np.concatenate([items[:, None], rest], axis=1)[:, :THREADS]


def _draw_user_topic(rng: np.random.Generator, st: _State, uni: _Universe, users: np.ndarray) -> np.ndarray:
    cw = np.cumsum(uni.user_weights[users], axis=1)
    slot = (rng.random(len(users))[:, None] > cw[:, :2]).sum(axis=1)
    return st.user_topics[users, slot]


def _next_items(rng: np.random.Generator, st: _State, uni: _Universe, smp: _Sampler,
                users: np.ndarray, start: bool) -> np.ndarray:
    prev = st.last_item[users]
    mode = np.searchsorted(np.cumsum(MODES_AT_START if start else MODES_IN_SESSION),
                           rng.random(len(users)), side="right")
    nxt = _thread_next(rng, st, uni, smp, users)
    nxt_ok = nxt >= 0
    user_t = _draw_user_topic(rng, st, uni, users)
    prev_t = np.where(prev >= 0, uni.item_topic[prev], user_t)
    cand = np.select([(mode == 0) & nxt_ok, mode <= 1, mode == 2],
                     [nxt, smp.in_topic(rng, prev_t), smp.in_topic(rng, user_t)],
                     smp.popular(rng, len(users)))
    for attempt in range(6):  # avoid unavailable and already consumed items
        bad = np.flatnonzero(~smp.avail[cand] | st.seen[users, cand])
        if len(bad) == 0:
            break
        if attempt < 4:
            topics = np.where(rng.random(len(bad)) < 0.5, prev_t[bad], user_t[bad])
            cand[bad] = smp.in_topic(rng, topics)
        else:
            cand[bad] = smp.popular(rng, len(bad))
    st.seen[users, cand] = True
    st.last_item[users] = cand
    _update_threads(st, uni, users, cand)
    return cand


def _day_events(rng: np.random.Generator, st: _State, uni: _Universe, cfg: DemoConfig, day: int,
                day_start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate one day; returns (users, items, unix seconds) sorted by time."""
    n_u = cfg.n_users
    k = (uni.user_weights > 0).sum(axis=1)
    movers = np.flatnonzero(rng.random(n_u) < DRIFT_RATE)
    slots = (rng.random(n_u) * k).astype(np.int64)
    new_topics = rng.integers(0, cfg.n_topics, n_u)
    st.user_topics[movers, slots[movers]] = new_topics[movers]
    active = (uni.user_join <= day) & ((uni.user_join == day) | (rng.random(n_u) < uni.user_p_active))
    lam = cfg.events_per_user_day * uni.user_intensity / uni.user_p_active - 1.0
    lengths = np.minimum(1 + rng.poisson(np.maximum(lam, 0.0)), MAX_SESSION)
    users, lengths = np.flatnonzero(active), lengths[active]
    smp = _Sampler(uni, (uni.release_day == 0) | (uni.release_day < day))
    ev_u, ev_i, ev_s = [], [], []
    for step in range(int(lengths.max(initial=0))):
        live = users[lengths > step]
        ev_u.append(live)
        ev_i.append(_next_items(rng, st, uni, smp, live, start=step == 0))
        ev_s.append(np.full(len(live), step))
    if not ev_u:
        return (np.empty(0, np.int64),) * 3
    u, i, s = (np.concatenate(a) for a in (ev_u, ev_i, ev_s))
    by_user = np.lexsort((s, u))
    u, i, s = u[by_user], i[by_user], s[by_user]
    gaps = np.where(s == 0, 0, 1 + np.minimum(rng.exponential(40.0, len(u)), 900).astype(np.int64))
    offsets = np.cumsum(gaps)
    offsets -= np.repeat(offsets[s == 0], lengths)
    duration = offsets[np.cumsum(lengths) - 1]
    r = rng.random(len(users))
    start = day_start + (r * (86400 - duration)).astype(np.int64)
    lo = np.maximum(st.last_ts[users] + 1, day_start - 86400)
    hi = day_start - duration
    late = (rng.random(len(users)) < LATE_SESSION_RATE) & (hi - 1 >= lo) & (day > 0)
    start = np.where(late, lo + (r * (hi - lo)).astype(np.int64), start)
    ts = np.repeat(start, lengths) + offsets
    st.last_ts[users] = ts[np.cumsum(lengths) - 1]
    by_time = np.lexsort((u, ts))
    return u[by_time], i[by_time], ts[by_time]


def _event_lines(rng: np.random.Generator, uni: _Universe, users: np.ndarray, items: np.ndarray,
                 ts: np.ndarray, user_ids: list[str]) -> list[str]:
    kind = rng.choice(len(EVENT_TYPES), len(users), p=EVENT_PROBS)
    rating = np.clip(np.round(2 * rng.normal(3.6 + uni.quality[items], 0.8)) / 2, 0.5, 5.0)
    qty = rng.choice([1, 2, 3], len(users), p=[0.8, 0.15, 0.05])
    values = [f"{r:.1f}" if k == 4 else str(q) if k == 3 else "null"
              for k, r, q in zip(kind.tolist(), rating.tolist(), qty.tolist(), strict=True)]
    stamps = np.datetime_as_string(ts.astype("datetime64[s]")).tolist()
    return [f'{{"user_id": "{user_ids[u]}", "item_id": "{uni.records[i]["item_id"]}", '
            f'"event_type": "{EVENT_TYPES[k]}", "value": {v}, "timestamp": "{t}Z"}}'
            for u, i, k, v, t in zip(users.tolist(), items.tolist(), kind.tolist(), values, stamps,
                                     strict=True)]


def _catalog_lines(rng: np.random.Generator, uni: _Universe, day: int, date: datetime.date) -> list[str]:
    stamp = f"{date.isoformat()}T00:00:00Z"
    lines = [json.dumps({**uni.records[i], "updated_at": stamp})
             for i in np.flatnonzero(uni.release_day == day).tolist()]
    updated = np.flatnonzero((uni.release_day < day) & (rng.random(len(uni.records)) < UPDATE_RATE))
    for i in updated.tolist():
        t = int(uni.item_topic[i])
        desc = _description(rng, uni.vocab[t], f"Revised edition of {uni.records[i]['title']}.")
        lines.append(json.dumps({**uni.records[i], "description": desc, "updated_at": stamp}))
    return lines


def _write(path: pathlib.Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")


def generate(landing_dir: pathlib.Path, config: DemoConfig) -> dict[str, int]:
    """Write landing files; return counts: {"days", "events", "malformed", "duplicates", "items"}.

    ``events`` counts well-formed distinct events, ``malformed`` / ``duplicates`` the extra
    broken and verbatim-repeated lines, ``items`` the distinct items released in the period.
    """
    landing_dir = pathlib.Path(landing_dir)
    uni = _build_universe(config)
    rng = np.random.default_rng([config.seed, 2])
    st = _State(np.full(config.n_users, -1), np.full(config.n_users, -(2**40)),
                np.zeros((config.n_users, config.n_items), dtype=bool), uni.user_topics.copy(),
                np.full((config.n_users, THREADS), -1))
    user_ids = [f"u{u:0{max(5, len(str(config.n_users)))}d}" for u in range(config.n_users)]
    epoch_day = (config.start_date - datetime.date(1970, 1, 1)).days
    counts = {"days": config.days, "events": 0, "malformed": 0, "duplicates": 0, "items": 0}
    for day in range(config.days):
        date = config.start_date + datetime.timedelta(days=day)
        users, items, ts = _day_events(rng, st, uni, config, day, (epoch_day + day) * 86400)
        lines = _event_lines(rng, uni, users, items, ts, user_ids)
        noisy, n_dup, n_bad = inject_noise(rng, lines, config.malformed_rate, config.duplicate_rate)
        _write(landing_path(landing_dir, "events", date), noisy)
        catalog = _catalog_lines(rng, uni, day, date)
        if catalog:
            _write(landing_path(landing_dir, "items", date), catalog)
        counts["events"] += len(lines)
        counts["duplicates"] += n_dup
        counts["malformed"] += n_bad
        counts["items"] += int((uni.release_day == day).sum())
        logger.debug("demo day %s: %d events, %d catalog lines", date, len(lines), len(catalog))
    logger.info("demo data written to %s: %s", landing_dir, counts)
    return counts
