"""The backtest's summaries (pooled over nights) and its printed table.

Per-night metrics are means over that night's next-day users, so pooling a variant's nights weighs each
night by its users: every (user, night) counts the same, and a night with one active user cannot swing the
figure as much as one with twenty. Coverage, training and wall seconds are means over nights.
"""

from __future__ import annotations

from typing import Any

PER_USER = ("ndcg", "hr", "recall")  # @k metrics that are means over a night's users
WITHIN = 0.02       # acceptance: warm start within 2% of the converged variant's next-day NDCG
COST_SHARE = 0.25   # acceptance: at no more than 25% of its training time
INCREMENTAL_WITHIN = 0.01  # acceptance: incremental nights within 1% of full warm nights' next-day NDCG


def methods_of(nights: list[dict[str, Any]]) -> list[str]:
    return list(next((n["methods"] for n in nights if n.get("methods")), {}))


def pooled(nights: list[dict[str, Any]], method: str, k: int) -> dict[str, float]:
    """A method's metrics over the nights' next-day users (user-weighted), and its mean coverage."""
    scored = [n["methods"][method] for n in nights if method in (n.get("methods") or {})]
    users = sum(m["n_users"] for m in scored)
    out = {f"{name}@{k}": (sum(m[f"{name}@{k}"] * m["n_users"] for m in scored) / users if users else 0.0)
           for name in PER_USER}
    out["mrr"] = sum(m["mrr"] * m["n_users"] for m in scored) / users if users else 0.0
    out[f"coverage@{k}"] = sum(m[f"coverage@{k}"] for m in scored) / len(scored) if scored else 0.0
    out["user_nights"] = float(users)
    out["user_nights_published"] = float(sum(m["n_users_published"] for m in scored))
    return out


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def variant_summary(nights: list[dict[str, Any]], k: int) -> dict[str, Any]:
    train = [float(n["train"]["train_seconds"]) for n in nights if (n.get("train") or {}).get("train_seconds")]
    stages = sorted({s for n in nights for s in n.get("stage_seconds") or {}})
    methods = {m: pooled(nights, m, k) for m in methods_of(nights)}
    ndcg = f"ndcg@{k}"
    best = max((m for m in methods if m != "model"), key=lambda m: methods[m][ndcg], default=None)
    return {
        "nights": len(nights),
        "failed": sum(n["status"] != "ok" for n in nights),
        "promoted": sum(bool((n.get("gate") or {}).get("promoted")) for n in nights),
        "methods": methods,
        "strongest_baseline": best,
        "beats_every_baseline": bool(best and methods["model"][ndcg] > methods[best][ndcg]),
        "train_seconds_total": round(sum(train), 2),
        "train_seconds_mean": _mean(train),
        "night_seconds_mean": _mean([n["wall_seconds"] for n in nights]),
        "stage_seconds_mean": {s: _mean([n["stage_seconds"][s] for n in nights if s in n["stage_seconds"]])
                               for s in stages},
    }


def warm_vs_converged(variants: dict[str, Any], k: int) -> dict[str, Any] | None:
    """The acceptance comparison: warm start against from-scratch-to-convergence, on the nights both replayed
    (and warm start over all its nights), next-day NDCG@k and training seconds per night."""
    if "warm_start" not in variants or "scratch_converged" not in variants:
        return None
    warm, conv = variants["warm_start"]["nights"], variants["scratch_converged"]["nights"]
    days = {n["date"] for n in conv}
    warm_same = [n for n in warm if n["date"] in days]
    ndcg = f"ndcg@{k}"
    conv_ndcg = pooled(conv, "model", k)[ndcg]
    warm_ndcg, warm_all = pooled(warm_same, "model", k)[ndcg], pooled(warm, "model", k)[ndcg]
    warm_train, conv_train = _train_seconds(warm), _train_seconds(conv)
    share = _share(warm_train, conv_train)
    return {
        "nights": sorted(days),
        "converged_ndcg": conv_ndcg,
        "warm_ndcg_same_nights": warm_ndcg,
        "warm_ndcg_all_nights": warm_all,
        "warm_over_converged": warm_ndcg / conv_ndcg if conv_ndcg else None,
        "warm_train_seconds_per_night": warm_train,
        "converged_train_seconds_per_night": conv_train,
        "train_time_share": share,
        "within_2pct": bool(conv_ndcg and warm_ndcg >= (1 - WITHIN) * conv_ndcg),
        "cost_at_most_25pct": bool(share is not None and share <= COST_SHARE),
    }


def incremental_vs_full(variants: dict[str, Any], k: int) -> dict[str, Any] | None:
    """The incremental-nights comparison: warm_incremental against warm_start over the warm nights both
    replayed (the first night trains from scratch in both): next-day NDCG@k pooled over all of them, and
    training seconds per night on the nights that really trained incrementally (not a full-retrain date)."""
    if "warm_start" not in variants or "warm_incremental" not in variants:
        return None
    full = {n["date"]: n for n in variants["warm_start"]["nights"] if (n.get("train") or {}).get("warm_start_from")}
    inc = [n for n in variants["warm_incremental"]["nights"]
           if n["date"] in full and (n.get("train") or {}).get("warm_start_from")]
    if not inc:
        return None
    ndcg = f"ndcg@{k}"
    inc_ndcg, full_ndcg = pooled(inc, "model", k)[ndcg], pooled([full[n["date"]] for n in inc], "model", k)[ndcg]
    partial = [n for n in inc if n["train"].get("incremental_since") not in (None, "full")]
    inc_train, full_train = _train_seconds(partial), _train_seconds([full[n["date"]] for n in partial])
    share = _share(inc_train, full_train)
    return {"nights": sorted(n["date"] for n in inc), "incremental_nights": sorted(n["date"] for n in partial),
            "full_ndcg": full_ndcg, "incremental_ndcg": inc_ndcg, "incremental_over_full": _share(inc_ndcg, full_ndcg),
            "incremental_train_seconds_per_night": inc_train, "full_train_seconds_per_night": full_train,
            "train_time_share": share,
            "within_1pct": bool(full_ndcg and inc_ndcg >= (1 - INCREMENTAL_WITHIN) * full_ndcg),
            "cost_at_most_25pct": bool(share is not None and share <= COST_SHARE)}


def _train_seconds(nights: list[dict[str, Any]]) -> float | None:
    return _mean([float(n["train"]["train_seconds"] or 0) for n in nights])


def _share(part: float | None, whole: float | None) -> float | None:
    return part / whole if part is not None and whole else None


def summarise(result: dict[str, Any], k: int) -> dict[str, Any]:
    variants = {name: variant_summary(v["nights"], k) for name, v in result["variants"].items()}
    return {"variants": variants, "warm_vs_converged": warm_vs_converged(result["variants"], k),
            "incremental_vs_full": incremental_vs_full(result["variants"], k)}


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) else "-"


def _comparison(k: int, ndcg: float, base_ndcg: float, ratio: float | None, within: str, training: str,
                seconds: float | None, base_seconds: float | None, share: float | None, cheap: bool) -> str:
    return (f"NDCG@{k} {_num(ndcg)} vs {_num(base_ndcg)} (x{_num(ratio, 3)}; {within}), {training} "
            f"{_num(seconds, 1)} vs {_num(base_seconds, 1)} s/night ({_num(share, 3)} of it; at most 25%: {cheap})")


def format_table(result: dict[str, Any]) -> str:
    """The printed table: per variant, next-day metrics of the model and each baseline, and the costs."""
    k = result["top_n"]
    lines = [f"backtest {result['from']}..{result['to']} (landing {result['landing']}): next-day metrics of "
             f"the published top {k}, pooled over the nights' next-day users"]
    for name, s in result["summary"]["variants"].items():
        users = s["methods"].get("model", {}).get("user_nights", 0)
        lines += ["", f"== {name}: {s['nights']} nights ({s['failed']} failed, {s['promoted']} promoted), "
                      f"{users:.0f} next-day user-nights; training {_num(s['train_seconds_mean'], 1)} s/night "
                      f"({_num(s['train_seconds_total'], 1)} s in all), night {_num(s['night_seconds_mean'], 1)} s",
                  f"{'method':<16} {'NDCG@' + str(k):>9} {'HR@' + str(k):>8} {'recall@' + str(k):>10} "
                  f"{'MRR':>7} {'coverage':>9}"]
        for method, m in s["methods"].items():
            lines.append(f"{method:<16} {_num(m[f'ndcg@{k}']):>9} {_num(m[f'hr@{k}']):>8} "
                         f"{_num(m[f'recall@{k}']):>10} {_num(m['mrr']):>7} {_num(m[f'coverage@{k}']):>9}")
        lines.append(f"model beats every baseline on NDCG@{k}: {s['beats_every_baseline']} "
                     f"(strongest: {s['strongest_baseline']})")
    cmp = result["summary"].get("warm_vs_converged")
    if cmp:
        lines += ["", f"warm start vs scratch to convergence on {len(cmp['nights'])} nights: " + _comparison(
            k, cmp["warm_ndcg_same_nights"], cmp["converged_ndcg"], cmp["warm_over_converged"],
            f"within 2%: {cmp['within_2pct']}", "training", cmp["warm_train_seconds_per_night"],
            cmp["converged_train_seconds_per_night"], cmp["train_time_share"], cmp["cost_at_most_25pct"])]
    inc = result["summary"].get("incremental_vs_full")
    if inc:
        lines += ["", f"incremental vs full warm nights on {len(inc['nights'])} warm nights: " + _comparison(
            k, inc["incremental_ndcg"], inc["full_ndcg"], inc["incremental_over_full"],
            f"within 1%: {inc['within_1pct']}", f"training on the {len(inc['incremental_nights'])} incremental nights",
            inc["incremental_train_seconds_per_night"], inc["full_train_seconds_per_night"], inc["train_time_share"],
            inc["cost_at_most_25pct"])]
    return "\n".join(lines)
