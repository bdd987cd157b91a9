"""The nightly report: what came in, what was trained, what the gate decided, what was published.

Markdown and HTML (with plots and trends, pipeline.report_html) for people and JSON for machines, all under
<home>/reports/<date>.*; stages.stage_report attaches them to the night's MLflow run.
Everything comes from the stages' ledger results for the date, the candidate
folder (metrics.json, gate.json) and the published slice of the warehouse table.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from pipeline import storage, warehouse
from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.report_html import plot_history, render_html

log = logging.getLogger(__name__)

__all__ = ["METRICS", "plot_history", "render_markdown", "write_report"]

METRICS = ("ndcg@10", "hr@10", "ndcg@20", "hr@20", "mrr", "coverage@10")
BEYOND_ACCURACY = ("coverage@10", "gini@10", "novelty@10", "ild@10", "popularity_lift@10", "cold_share@10")


def _sample_recommendations(con: duckdb.DuckDBPyConnection, data_date: dt.date, catalog: pa.Table | None,
                            users: int = 3, k: int = 5) -> list[dict[str, Any]]:
    """The top k of a few model-served users, with item titles (and the reason's) from the night's catalog."""
    if catalog is None:
        con.register("titles", pa.table({"item_id": pa.array([], pa.string()),
                                         "title": pa.array([], pa.string())}))
    else:
        con.register("titles", catalog.select(["item_id", "title"]))
    rows = con.execute(
        """with sample as (
               select distinct user_id from recommendations where dt = $dt and source = 'model'
               order by user_id limit $users)
           select r.user_id, r.rank, r.item_id, coalesce(t.title, '(not in catalog)') as title, r.score,
                  r.source, r.reason_item_id, rt.title as reason_title
           from recommendations as r
           join sample using (user_id)
           left join titles as t on t.item_id = r.item_id
           left join titles as rt on rt.item_id = r.reason_item_id
           where r.dt = $dt and r.rank <= $k
           order by r.user_id, r.rank""",
        {"dt": data_date, "users": users, "k": k},
    ).fetchall()
    names = ("user_id", "rank", "item_id", "title", "score", "source", "reason_item_id", "reason_title")
    return [dict(zip(names, r, strict=True)) for r in rows]


def _coverage(con: duckdb.DuckDBPyConnection, data_date: dt.date, catalog: pa.Table | None) -> dict[str, Any]:
    """What the published night covers: users by source, distinct items, share of the catalog recommended."""
    users, model_users, popular_users, rows, items = con.execute(
        """select count(distinct user_id),
                  count(distinct user_id) filter (where source = 'model'),
                  count(distinct user_id) filter (where source = 'popular'),
                  count(*),
                  count(distinct item_id)
           from recommendations where dt = $dt""",
        {"dt": data_date},
    ).fetchall()[0]
    out: dict[str, Any] = {"users": users, "model_users": model_users, "popular_users": popular_users,
                           "rows": rows, "distinct_items": items}
    if catalog is not None:
        catalog_items = catalog.num_rows
        out["catalog_items"] = catalog_items
        out["catalog_coverage"] = items / catalog_items if catalog_items else 0.0
    return out


def _published(settings: Settings, data_date: dt.date) -> dict[str, Any]:
    """Coverage and samples of the night as published in the warehouse."""
    items = Catalog.of(settings).mart(data_date, "item_catalog")
    catalog_items = storage.read_table(items, ["item_id", "title"]) if storage.exists(items) else None
    night = warehouse.published_night(Catalog.of(settings).warehouse, data_date)
    with duckdb.connect() as con:
        con.register("recommendations", night)
        return {"coverage": _coverage(con, data_date, catalog_items),
                "samples": _sample_recommendations(con, data_date, catalog_items)}


def _evaluation(train: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json of the candidate folder: "model" = the challenger, and the baselines; gate.json)."""
    folder = storage.as_location(train["candidate_dir"]) if train.get("candidate_dir") else None
    if folder is None or not storage.exists(storage.child(folder, "metrics.json")):
        return {}, {}
    metrics = json.loads(storage.read_bytes(storage.child(folder, "metrics.json")))
    gate_json = storage.child(folder, "gate.json")
    gate = json.loads(storage.read_bytes(gate_json)) if storage.exists(gate_json) else {}
    return metrics, gate


def _comparison(metrics: dict[str, Any], gate: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Rows of the evaluation table: challenger, champion (re-evaluated by the gate), baselines."""
    rows: dict[str, dict[str, Any]] = {}
    if "model" in metrics:
        rows["challenger"] = metrics["model"]
    champion = gate.get("champion_metrics")
    if champion is not None:
        rows[f"champion (version {gate.get('champion_version')})"] = champion
    rows.update({name: m for name, m in metrics.items() if name != "model"})
    return rows


def write_report(settings: Settings, data_date: dt.date, results: dict[str, Any]) -> dict[str, str]:
    """Write reports/<date>.md, .json and .html (under the home, or under `lake_uri` when set); returns their
    locations."""
    catalog = Catalog.of(settings)
    metrics, gate = _evaluation(results.get("train") or {})
    published = _published(settings, data_date) if results.get("publish") else {}
    payload = {**results, "metrics": metrics, "gate": gate, **published}
    json_path = catalog.report(data_date, ".json")
    _write(settings, data_date, payload, json_path)
    paths = {kind: str(_beside(json_path, suffix)) for kind, suffix in REPORT_FILES.items()}
    log.info("report written to %s and %s", paths["markdown"], paths["html"])
    return paths


REPORT_FILES = {"markdown": ".md", "json": ".json", "html": ".html"}


def _beside(json_path: Path | str, suffix: str) -> Path | str:
    """The report file with another suffix beside a report's JSON (a local path or a URI)."""
    return storage.as_location(str(json_path).removesuffix(".json") + suffix)


def _write(settings: Settings, data_date: dt.date, payload: dict[str, Any], json_path: Path | str) -> None:
    """The report's JSON at json_path and its Markdown and HTML beside it, each written atomically."""
    html = render_html(settings, data_date, json.loads(json.dumps(payload, default=str)),
                       _comparison(payload.get("metrics") or {}, payload.get("gate") or {}), METRICS)
    texts = {".md": render_markdown(data_date, payload), ".json": json.dumps(payload, indent=2, default=str),
             ".html": html}
    for suffix, text in texts.items():
        storage.write_bytes(_beside(json_path, suffix), text.encode("utf-8"))


def rewrite_without_users(settings: Settings, json_path: Path | str, user_ids: set[str]) -> bool:
    """Rewrite a report (its JSON, and the Markdown and HTML beside it; a copy among MLflow's artifacts too)
    without the sample rows of these users (pipeline.erasure). False when it is not a report or has none."""
    payload = json.loads(storage.read_bytes(json_path))
    if not isinstance(payload, dict) or "data_date" not in payload or "samples" not in payload:
        return False
    samples = payload["samples"] or []
    kept = [s for s in samples if s.get("user_id") not in user_ids]
    if len(kept) == len(samples):
        return False
    _write(settings, dt.date.fromisoformat(payload["data_date"]), {**payload, "samples": kept}, json_path)
    return True


def render_markdown(data_date: dt.date, r: dict[str, Any]) -> str:
    """The report as Markdown, from the payload that is also written as JSON."""
    sections = [_header, _data, _metrics, _gate, _published_section, _samples, _housekeeping]
    lines = [f"# nightly-recs report for {data_date.isoformat()}", ""]
    for section in sections:
        lines += section(r)
    return "\n".join(lines)


def _header(r: dict[str, Any]) -> list[str]:
    model = r.get("select_model") or {}
    if not model.get("degraded"):
        return []
    return ["> **DEGRADED RUN: training failed; recommendations were published with the previous "
            f"champion (version {model.get('version')}).**", ""]


def _data(r: dict[str, Any]) -> list[str]:
    ingest = r.get("ingest") or {}
    lines = ["## Data", "", "| input | files | rows read | accepted | quarantined | duplicates | forgotten |",
             "|---|---|---|---|---|---|---|"]
    for kind in ("events", "items"):
        c = ingest.get(kind) or {}
        lines.append(f"| {kind} | {c.get('files', 0)} | {c.get('rows_read', 0)} | {c.get('accepted', 0)} | "
                     f"{c.get('quarantined', 0)} | {c.get('duplicates', 0)} | {c.get('forgotten', 0)} |")
    lines.append("")
    for kind in ("events", "items"):
        reasons = (ingest.get(kind) or {}).get("reasons") or {}
        if reasons:
            ordered = sorted(reasons.items(), key=lambda kv: -kv[1])
            lines += [f"Quarantine reasons ({kind}): " + ", ".join(f"{k} ({v})" for k, v in ordered), ""]
    counts = (r.get("features") or {}).get("counts") or {}
    if counts:
        lines += ["Feature tables: " + ", ".join(f"{k} {v}" for k, v in counts.items()), ""]
    return lines


def _metrics(r: dict[str, Any]) -> list[str]:
    metrics = _comparison(r.get("metrics") or {}, r.get("gate") or {})
    if not metrics:
        return []
    temporal = (r.get("gate") or {}).get("gate_split") == "temporal"
    split = ("temporal split: trained before the data date, evaluated on its new items; loo_* rows: "
             "leave-one-out, secondary" if temporal else "leave-one-out test items")
    lines = [f"## Evaluation ({split}, full ranking, seen items removed)", "",
             "| model | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, m in metrics.items():
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), int | float) else "" for k in METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Beyond accuracy (top-10 lists: catalog coverage, Gini of exposure, novelty in bits, intra-list "
              "diversity of the item texts, popularity lift over the users' histories, cold-item share):", "",
              "| model | " + " | ".join(BEYOND_ACCURACY) + " |", "|---" * (len(BEYOND_ACCURACY) + 1) + "|"]
    for name, m in metrics.items():
        cells = [f"{m[k]:.4f}" if isinstance(m.get(k), int | float) else "" for k in BEYOND_ACCURACY]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def _gate(r: dict[str, Any]) -> list[str]:
    reg = r.get("register") or {}
    if not reg:
        return []
    verdict = "promoted to champion" if reg.get("promoted") else "rejected (champion unchanged)"
    forced = " **(forced by operator)**" if reg.get("forced") else ""
    return ["## Gate", "", f"- Version {reg.get('version')}: **{verdict}**{forced}.",
            f"- Reason: {reg.get('reason')}",
            f"- Previous champion: {reg.get('previous_champion') or 'none'}.", ""]


def _published_section(r: dict[str, Any]) -> list[str]:
    pub, cov = r.get("publish") or {}, r.get("coverage") or {}
    if not pub:
        return ["## Published", "", "Nothing was published for this date.", ""]
    version = (r.get("recommend") or {}).get("model_version") or (r.get("select_model") or {}).get("version")
    lines = ["## Published", "",
             f"{pub.get('rows')} rows for {pub.get('users')} users from model version {version}; lake table "
             f"`{pub.get('lake_table')}` (Delta version {pub.get('lake_version')}); warehouse table "
             f"`recommendations` in `{pub.get('warehouse')}`.", ""]
    if cov:
        share = ""
        if "catalog_items" in cov:
            share = f" ({cov['catalog_coverage']:.1%} of {cov['catalog_items']} catalog items)"
        lines += [f"Coverage: {cov['model_users']} users served by the model, {cov['popular_users']} by the "
                  f"most-popular fallback; {cov['distinct_items']} distinct items recommended{share}.", ""]
    return lines


def _samples(r: dict[str, Any]) -> list[str]:
    samples = r.get("samples") or []
    if not samples:
        return []
    lines = ["## Sample recommendations", "", "| user | rank | item | title | score | because of |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {s['user_id']} | {s['rank']} | {s['item_id']} | {s['title']} | {s['score']:.3f} | "
              f"{s.get('reason_title') or s.get('reason_item_id') or ''} |" for s in samples]
    return lines + [""]


def _housekeeping(r: dict[str, Any]) -> list[str]:
    counts = r.get("housekeeping") or {}
    if not counts or counts.get("status") == "failed":
        return []
    return ["## Housekeeping", "", ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in sorted(counts.items())), ""]
