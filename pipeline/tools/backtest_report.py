"""The backtest's HTML page: one self-contained file (inline CSS and PNG, no script), like the nightly report
(pipeline/report_html.py's plotting helpers, a Jinja template in pipeline/templates/).

The plot shows, per night and per variant, the next-day NDCG@N of the published model lists (with the
baselines' of the first variant, dashed), the same pooled over the nights so far (user-weighted), and the
cost: training seconds and the whole night's wall seconds.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from pipeline.report_html import TEMPLATES, figure_png, pyplot


def _series(nights: list[dict[str, Any]], method: str, key: str) -> tuple[list[dt.date], list[float]]:
    """(dates, values) of one method's metric over the scored nights."""
    scored = [n for n in nights if method in (n.get("methods") or {})]
    return [dt.date.fromisoformat(n["date"]) for n in scored], [n["methods"][method][key] for n in scored]


def _running(nights: list[dict[str, Any]], method: str, key: str) -> tuple[list[dt.date], list[float]]:
    """The user-weighted mean of a metric over the nights so far."""
    dates, values, total, users = [], [], 0.0, 0.0
    for n in nights:
        m = (n.get("methods") or {}).get(method)
        if m is None:
            continue
        total, users = total + m[key] * m["n_users"], users + m["n_users"]
        dates.append(dt.date.fromisoformat(n["date"]))
        values.append(total / users if users else 0.0)
    return dates, values


def plot_backtest(result: dict[str, Any]) -> str | None:
    """Next-day quality and cost per night for each variant, as one base64 PNG."""
    variants = result["variants"]
    if not any(v["nights"] for v in variants.values()):
        return None
    key = f"ndcg@{result['top_n']}"
    plt = pyplot()
    from matplotlib.dates import DateFormatter

    fig, axes = plt.subplots(2, 2, figsize=(12, 7))
    first = next(iter(variants.values()))["nights"]
    baselines = [m for m in next((n["methods"] for n in first if n.get("methods")), {}) if m != "model"]
    for panel, series in ((axes[0, 0], _series), (axes[0, 1], _running)):
        for name, v in variants.items():
            panel.plot(*series(v["nights"], "model", key), marker="o", label=f"model, {name}")
        for method in baselines:
            panel.plot(*series(first, method, key), linestyle="--", marker=".", label=method)
    axes[0, 0].set_title(f"next-day {key.upper()} per night (published lists)", fontsize=10)
    axes[0, 1].set_title(f"next-day {key.upper()}, pooled over the nights so far", fontsize=10)
    for name, v in variants.items():
        dates = [dt.date.fromisoformat(n["date"]) for n in v["nights"]]
        axes[1, 0].plot(dates, [(n.get("train") or {}).get("train_seconds") or 0.0 for n in v["nights"]],
                        marker="o", label=name)
        axes[1, 1].plot(dates, [n["wall_seconds"] for n in v["nights"]], marker="o", label=name)
    axes[1, 0].set_title("training seconds per night", fontsize=10)
    axes[1, 1].set_title("night wall seconds (all stages)", fontsize=10)
    for ax in axes.flat:
        ax.legend(fontsize=7)
        ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    return figure_png(fig)


def render_backtest_html(result: dict[str, Any]) -> str:
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    return env.get_template("backtest.html.j2").render(r=result, k=result["top_n"], plot=plot_backtest(result))


def write_backtest_html(result: dict[str, Any], path: Path) -> Path:
    from pipeline.atomic import atomic_open

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "w") as fh:
        fh.write(render_backtest_html(result))
    return path
