"""The night's report as one self-contained HTML page: plots are inline PNGs (base64), no script, no network,
so it opens offline and as an MLflow artifact.

Sections: volumes and quarantine reasons, the evaluation table against every baseline, the gate decision, the
training curve, coverage and popularity of what was published, sample recommendations with titles,
housekeeping, and trends over the last `operations.report_trend_nights` nights from the `runs` ledger
(quality, volumes, quarantine rate, training time, popular-fallback share, catalog coverage).
The page comes from templates/night_report.html.j2; the payload is the one report.write_report also writes
as JSON.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
from pathlib import Path
from typing import Any, BinaryIO

import duckdb

from pipeline import storage, warehouse
from pipeline.catalog import Catalog
from pipeline.config import Settings

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates"
# (key, title) of each trend plot, in page order; values come from trend_rows.
TRENDS = (
    ("ndcg", "test NDCG@10 (model vs most-popular)"),
    ("events", "accepted events"),
    ("quarantine_rate", "quarantine rate"),
    ("train_seconds", "training time (s)"),
    ("fallback_share", "popular-fallback share"),
    ("coverage", "catalog coverage"),
)


def _ratio(num: Any, den: Any) -> float | None:
    return float(num) / float(den) if isinstance(num, int | float) and isinstance(den, int | float) and den else None


def _night_point(day: dt.date, stages: dict[str, dict[str, Any]], distinct: int | None) -> dict[str, Any]:
    """One night's trend values from its stages' ledger results (None where a stage did not run or failed)."""
    events = (stages.get("ingest") or {}).get("events") or {}
    train, rec = stages.get("train") or {}, stages.get("recommend") or {}
    catalog_items = ((stages.get("features") or {}).get("counts") or {}).get("item_catalog")
    seconds = train.get("train_seconds")
    if seconds is None and train.get("epochs") is not None and train.get("seconds_per_epoch") is not None:
        seconds = train["epochs"] * train["seconds_per_epoch"]
    return {
        "date": day.isoformat(),
        "ndcg": train.get("ndcg@10"),
        "popular_ndcg": train.get("popular_ndcg@10"),
        "events": events.get("accepted"),
        "quarantine_rate": _ratio(events.get("quarantined"), events.get("rows_read")),
        "train_seconds": seconds,
        "fallback_share": _ratio(rec.get("popular_fallback_rows"), rec.get("rows")),
        "coverage": _ratio(distinct, catalog_items),
    }


def trend_rows(path: Path, data_date: dt.date, nights: int) -> list[dict[str, Any]]:
    """One row per published night among the last `nights` dates up to data_date, oldest first."""
    with warehouse.connect(path) as con:
        rows = con.execute(
            """select dt, stage, details from (
                   select dt, stage, details,
                          row_number() over (partition by dt, stage order by finished_at desc) as newest
                   from runs
                   where status = 'ok' and dt <= $dt and dt > cast($dt as date) - cast($nights as integer))
                   as ranked
               where newest = 1
               order by dt""",
            {"dt": data_date, "nights": nights},
        ).fetchall()
        distinct = dict(con.execute(
            """select dt, count(distinct item_id) from recommendations
               where dt <= $dt and dt > cast($dt as date) - cast($nights as integer) group by dt""",
            {"dt": data_date, "nights": nights},
        ).fetchall())
    by_night: dict[dt.date, dict[str, dict[str, Any]]] = {}
    for day, stage, details in rows:
        by_night.setdefault(day, {})[stage] = json.loads(details) if details else {}
    return [_night_point(day, stages, distinct.get(day)) for day, stages in sorted(by_night.items())
            if "publish" in stages]


def plot_history(history: list[dict[str, float]], path: Path | BinaryIO) -> Path | BinaryIO | None:
    """Training loss and validation NDCG@10 per epoch, as a PNG (a file, or written into a binary buffer)."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    fig, ax1 = plt.subplots(figsize=(7, 4))
    ax1.plot(epochs, [h.get("loss", float("nan")) for h in history], color="tab:blue", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:blue")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h.get("valid_ndcg@10", float("nan")) for h in history], color="tab:orange",
             label="valid NDCG@10")
    ax2.set_ylabel("valid NDCG@10", color="tab:orange")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def popularity_deciles(settings: Settings, data_date: dt.date) -> list[float]:
    """Share of the published recommendation slots per popularity decile of the catalog (1 = the most popular
    tenth by events over 30 days); empty when the night published nothing."""
    catalog = Catalog.of(settings)
    popularity, items = catalog.mart(data_date, "item_popularity"), catalog.mart(data_date, "item_catalog")
    if not (storage.exists(popularity) and storage.exists(items)):
        return []
    night = warehouse.published_night(catalog.warehouse, data_date)
    with duckdb.connect() as con:
        con.register("recommendations", night)
        con.register("catalog_items", storage.read_table(items, ["item_id"]))
        con.register("catalog_popularity", storage.read_table(popularity, ["item_id", "events_30d"]))
        rows = con.execute(
            """with items as (select item_id from catalog_items),
               popularity as (select item_id, events_30d from catalog_popularity),
               ranked as (
                   select i.item_id, ntile(10) over (order by coalesce(p.events_30d, 0) desc, i.item_id) as decile
                   from items as i left join popularity as p using (item_id)),
               final as (
                   select coalesce(r.decile, 10) as decile, count(*) as slots
                   from recommendations as rec left join ranked as r using (item_id)
                   where rec.dt = $dt group by 1)
               select decile, slots from final order by decile""",
            {"dt": data_date},
        ).fetchall()
    total = sum(n for _, n in rows)
    per = dict(rows)
    return [per.get(d, 0) / total for d in range(1, 11)] if total else []


def figure_png(fig: Any) -> str:
    """A matplotlib figure as a base64 PNG (for a data: URI); closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_trends(rows: list[dict[str, Any]]) -> str | None:
    """The trend panels (one marker per night) as one PNG."""
    if not rows:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    dates = [dt.date.fromisoformat(r["date"]) for r in rows]
    for ax, (key, title) in zip(axes.flat, TRENDS, strict=True):
        ax.plot(dates, [r[key] if r[key] is not None else float("nan") for r in rows], marker="o", label="model")
        if key == "ndcg":
            ax.plot(dates, [r["popular_ndcg"] if r["popular_ndcg"] is not None else float("nan") for r in rows],
                    marker="s", linestyle="--", label="most popular")
            ax.legend(fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return figure_png(fig)


def plot_deciles(shares: list[float]) -> str | None:
    if not shares:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(range(1, 11), shares, color="tab:green")
    ax.axhline(0.1, color="gray", linestyle=":", label="uniform")
    ax.set_xlabel("item popularity decile (1 = most popular)")
    ax.set_ylabel("share of published slots")
    ax.set_xticks(range(1, 11))
    ax.legend(fontsize=8)
    return figure_png(fig)


def plot_training(candidate_dir: str | None) -> str | None:
    """The training curve of tonight's candidate (from its train.json), when there was one."""
    train_json = storage.child(storage.as_location(candidate_dir), "train.json") if candidate_dir else None
    if train_json is None or not storage.exists(train_json):
        return None
    history = json.loads(storage.read_bytes(train_json)).get("history") or []
    buffer = io.BytesIO()
    if plot_history(history, buffer) is None:
        return None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def render_html(settings: Settings, data_date: dt.date, payload: dict[str, Any], evaluation: dict[str, Any],
                metrics: tuple[str, ...]) -> str:
    """The page for one night: `payload` is report.write_report's JSON payload, `evaluation` its table rows."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    trends = trend_rows(Catalog.of(settings).warehouse, data_date, settings.operations.report_trend_nights)
    plots = {
        "training": plot_training((payload.get("train") or {}).get("candidate_dir")),
        "popularity": plot_deciles(popularity_deciles(settings, data_date) if payload.get("publish") else []),
        "trends": plot_trends(trends),
    }
    return env.get_template("night_report.html.j2").render(
        day=data_date.isoformat(), r=payload, evaluation=evaluation, metrics=metrics, plots=plots, trends=trends,
        trend_keys=TRENDS, nights=settings.operations.report_trend_nights,
    )
