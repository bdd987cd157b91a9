"""The nightly report: what came in, what was trained, what the gate decided, what was published."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import duckdb

from pipeline.config import Settings

log = logging.getLogger(__name__)

METRICS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr", "coverage@10")


def plot_history(history: list[dict[str, float]], path: Path) -> Path | None:
    """Training loss and validation NDCG@10 per epoch, as a PNG."""
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


def _sample_recommendations(settings: Settings, data_date: dt.date, users: int = 3, k: int = 5) -> list[dict]:
    from pipeline.features import mart_path

    catalog = str(mart_path(settings.lake_dir, data_date, "item_catalog"))
    with duckdb.connect(str(settings.warehouse_path), read_only=True) as con:
        rows = con.execute(
            """with sample as (
                   select distinct user_id from recommendations where dt = $dt and source = 'model'
                   order by user_id limit $users)
               select r.user_id, r.rank, r.item_id, coalesce(c.title, '(not in catalog)') as title, r.score
               from recommendations as r
               join sample using (user_id)
               left join read_parquet($catalog) as c on c.item_id = r.item_id
               where r.dt = $dt and r.rank <= $k
               order by r.user_id, r.rank""",
            {"dt": data_date, "users": users, "k": k, "catalog": catalog},
        ).fetchall()
    return [dict(zip(("user_id", "rank", "item_id", "title", "score"), r, strict=True)) for r in rows]


def write_report(settings: Settings, data_date: dt.date, results: dict[str, Any]) -> dict[str, str]:
    """Write reports/<date>.md and reports/<date>.json under the state folder."""
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    samples = _sample_recommendations(settings, data_date) if results.get("publish") else []
    metrics: dict[str, Any] = {}
    train = results.get("train") or {}
    if train.get("candidate_dir"):
        metrics = json.loads((Path(train["candidate_dir"]) / "metrics.json").read_text())
    payload = {**results, "metrics": metrics, "samples": samples}
    md = _markdown(data_date, payload)
    md_path = settings.reports_dir / f"{data_date.isoformat()}.md"
    json_path = settings.reports_dir / f"{data_date.isoformat()}.json"
    md_path.write_text(md, encoding="utf-8")
    json_path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    log.info("report written to %s", md_path)
    return {"markdown": str(md_path), "json": str(json_path)}


def _markdown(data_date: dt.date, r: dict[str, Any]) -> str:
    lines = [f"# nightly-recs report for {data_date.isoformat()}", ""]
    model = r.get("select_model") or {}
    if model.get("degraded"):
        lines += ["> **DEGRADED RUN: training failed; recommendations were published with the previous "
                  f"champion (version {model.get('version')}).**", ""]
    ev = (r.get("ingest") or {}).get("events") or {}
    lines += ["## Data", "", "| rows read | accepted | quarantined | duplicates |", "|---|---|---|---|",
              f"| {ev.get('rows_read', 0)} | {ev.get('accepted', 0)} | {ev.get('quarantined', 0)} | "
              f"{ev.get('duplicates', 0)} |", ""]
    reasons = ev.get("reasons") or {}
    if reasons:
        lines += ["Quarantine reasons: " + ", ".join(f"{k} ({v})" for k, v in sorted(reasons.items())), ""]
    metrics = r.get("metrics") or {}
    if metrics:
        lines += ["## Evaluation (leave-one-out, full ranking, seen items removed)", "",
                  "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
        for name, m in metrics.items():
            lines.append(f"| {name} | " + " | ".join(f"{m.get(k, float('nan')):.4f}" for k in METRICS) + " |")
        lines.append("")
    reg = r.get("register") or {}
    if reg:
        lines += ["## Gate", "", f"Version {reg.get('version')}: **{'promoted' if reg.get('promoted') else 'rejected'}**"
                  f"{' (forced by operator)' if reg.get('forced') else ''}. {reg.get('reason')}", ""]
    pub = r.get("publish") or {}
    if pub:
        lines += ["## Published", "", f"{pub.get('rows')} rows for {pub.get('users')} users, model version "
                  f"{model.get('version')}; Parquet `{pub.get('parquet')}`; warehouse table `recommendations` in "
                  f"`{pub.get('warehouse')}`.", ""]
    if r.get("samples"):
        lines += ["## Sample recommendations", "", "| user | rank | item | title |", "|---|---|---|---|"]
        lines += [f"| {s['user_id']} | {s['rank']} | {s['item_id']} | {s['title']} |" for s in r["samples"]]
        lines.append("")
    return "\n".join(lines)
