"""nightly_recommendations: every night at 02:00 UTC, recommendations from the day that just closed.

Only wiring lives here: each task calls one stage function of `pipeline.stages` and returns a small dict.
Heavy libraries (torch, transformers, duckdb, mlflow) are imported inside the stage functions, never at parse.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import (
    AsyncCallback,
    CronDataIntervalTimetable,
    DeadlineAlert,
    DeadlineReference,
    Param,
    dag,
    get_current_context,
    task,
)

from pipeline.config import load_settings
from pipeline.dag_support import (
    SCHEDULE_CRON,
    call_stage,
    data_date_from_context,
    default_args,
    gpu_executor_config,
    nightly_assets,
    notify_deadline_missed,
)

SETTINGS = load_settings()
ASSETS = nightly_assets(SETTINGS)

DEFAULT_ARGS = default_args(SETTINGS)  # retries, timeout, a notification when a task fails for good
# Where the accelerator-hungry tasks run: a pool bounds how many use the GPU at once, a queue routes them to
# GPU workers (CeleryExecutor; LocalExecutor ignores queues), a pod_override gives them a GPU pod
# (KubernetesExecutor, when `gpu_image` is set).
GPU = {"pool": SETTINGS.airflow.gpu_pool, "queue": SETTINGS.airflow.gpu_queue, **gpu_executor_config(SETTINGS)}
# One writer of the published table at a time across runs (a backfill beside the nightly run): a pool of one
# slot; publish.py's per-date lock holds the same promise outside Airflow.
WRITER = {"pool": SETTINGS.airflow.writer_pool}
# Page someone when a run has not finished this long after it was queued (02:00 + 4 h by default); 0 = off.
DEADLINE = DeadlineAlert(
    reference=DeadlineReference.DAGRUN_QUEUED_AT,
    interval=dt.timedelta(minutes=SETTINGS.airflow.publish_deadline_minutes),
    callback=AsyncCallback(notify_deadline_missed),
) if SETTINGS.airflow.publish_deadline_minutes else None

DOC_MD = __doc__ + """
### Data date
The day of `data_interval_start`: the run at 02:00 on D+1 has the interval [D 02:00, D+1 02:00) and
processes D.
A run triggered without a logical date processes the last closed day; the `data_date` param overrides both.
Rerunning a date replaces exactly what that date wrote (ingest is a no-op for unchanged landing files).

### Failure modes
* **Deterministic errors** (bad landing data, a grain check, publishing rules, settings, a future data date)
  fail their task at once, without retries; other errors retry with backoff. Every task that fails for good
  notifies (log + `alert_webhook_url`); so does a degraded night, and a run not finished
  `publish_deadline_minutes` after it was queued (a deadline alert).
* **Ingest over its quarantine threshold**: `ingest` fails without retrying and nothing downstream runs for
  the date; earlier nights stay published. Fix the landing file, then clear `ingest`.
* **Training, registration or the gate fails after its retries**: *degraded mode*. `select_model` serves the
  current champion, the night still publishes, and the report, the summary, the asset event and a notification
  say `degraded`.

### Backfills
`airflow backfill create --dag-id nightly_recommendations --from-date A --to-date B --dag-run-conf
'{"retrain": false}'` republishes a range with the current champion; one run at a time, oldest first.
"""


def _night() -> tuple[dt.date, dict]:
    context = get_current_context()
    return data_date_from_context(context), context["params"]


@dag(
    dag_id="nightly_recommendations",
    schedule=CronDataIntervalTimetable(SCHEDULE_CRON, timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recommendations", "nightly-recs"],
    doc_md=DOC_MD,
    deadline=DEADLINE,
    params={
        "top_n": Param(
            SETTINGS.serving.top_n, type="integer", minimum=1, maximum=1000, title="Recommendations per user",
            description="How many items to publish per active user (1..1000).",
        ),
        "retrain": Param(
            True, type="boolean", title="Train tonight",
            description="Train a challenger tonight. Off: reuse the champion (ingest, embed new items, "
                        "score).",
        ),
        "max_epochs": Param(
            None, type=["null", "integer"], minimum=1, maximum=1000, title="Max epochs",
            description="Override the training epochs; empty uses the settings.",
        ),
        "force_promote": Param(
            False, type="boolean", title="Force promotion",
            description="Promote tonight's model even if it loses the gate. Audited: recorded on the model "
                        "version and in the task log with the triggering user.",
        ),
        "diversity": Param(
            SETTINGS.serving.diversity, type="number", minimum=0, maximum=1, title="Diversity (MMR weight)",
            description="Re-rank each list by maximal marginal relevance with this weight (0..1); 0 = off.",
        ),
        "data_date": Param(
            None, type=["null", "string"], format="date", title="Data date",
            description="Process this day (YYYY-MM-DD) instead of the day that just closed; for reruns.",
        ),
    },
)
def nightly_recommendations() -> None:  # noqa: C901 (one nested function per task)
    @task(outlets=[ASSETS["interactions"]])
    def ingest() -> dict:
        """Landing files -> validated lake partitions. Fails without retry above the quarantine threshold."""
        from pipeline.stages import stage_ingest

        return call_stage(stage_ingest, SETTINGS, _night()[0])

    @task
    def features() -> dict:
        """Lake -> the night's feature marts (DuckDB SQL)."""
        from pipeline.stages import stage_features

        return call_stage(stage_features, SETTINGS, _night()[0])

    @task(outlets=[ASSETS["item_embeddings"]], **GPU)
    def embed() -> dict:
        """Text embeddings of the catalog; only texts not in the cache are encoded."""
        from pipeline.stages import stage_embed

        return call_stage(stage_embed, SETTINGS, _night()[0])

    @task(**GPU)
    def train() -> dict:
        """Train a challenger (skipped when retrain=false)."""
        from pipeline.dag_support import skip_unless_retrain
        from pipeline.stages import stage_train

        day, params = skip_unless_retrain(*_night())
        return call_stage(stage_train, SETTINGS, day, params["max_epochs"], get_current_context()["run_id"])

    @task(outlets=[ASSETS["model"]])
    def register(candidate: dict) -> dict:
        """Log the challenger to MLflow (continuing the training's run) and run the champion/challenger gate;
        the model asset event says which version, whether it was promoted and why."""
        from pipeline.dag_support import attach_asset_extra, audit_force_promote, model_summary
        from pipeline.stages import stage_register

        context = get_current_context()
        result = call_stage(stage_register, SETTINGS, data_date_from_context(context), candidate["candidate_dir"],
                            audit_force_promote(context), context["run_id"],
                            getattr(context["dag_run"], "triggering_user_name", None) or "",
                            train_run_id=candidate.get("run_id", ""))
        attach_asset_extra(context, ASSETS["model"], model_summary(result))
        return result

    @task(trigger_rule="all_done")
    def select_model() -> dict:
        """The model that serves tonight: the champion; degraded (and notified) if no gate decision was recorded."""
        from pipeline.dag_support import notify_degraded, require_upstream_result
        from pipeline.stages import stage_select_model

        context = get_current_context()
        require_upstream_result(context, "embed")
        day, params = _night()
        chosen = call_stage(stage_select_model, SETTINGS, day, bool(params["retrain"]), context["run_id"])
        if chosen["degraded"]:
            notify_degraded(context, chosen, day)
        return chosen

    @task
    def plan_scoring() -> list[dict]:
        """The scoring shards: one below `score_shard_users` active users, else up to `score_max_shards`."""
        from pipeline.stages import stage_plan_scoring

        return call_stage(stage_plan_scoring, SETTINGS, _night()[0])

    @task
    def recommend(chosen: dict, shard: dict) -> dict:
        """Score one shard of the active users with the version select_model chose; stage its part."""
        from pipeline.stages import stage_recommend

        day, params = _night()
        return call_stage(stage_recommend, SETTINGS, day, int(params["top_n"]), chosen["version"],
                          float(params["diversity"]), shard=shard)

    @task(outlets=[ASSETS["recommendations"]], **WRITER)
    def publish(parts: list[dict], chosen: dict) -> dict:
        """Validate every shard's part together and publish them atomically; the asset event carries the date,
        path and serving model."""
        from pipeline.dag_support import attach_asset_extra, publish_summary
        from pipeline.stages import stage_publish

        day, parts = _night()[0], list(parts)
        result = call_stage(stage_publish, SETTINGS, day, parts, parts[0]["top_n"], parts[0]["model_version"])
        return attach_asset_extra(get_current_context(), ASSETS["recommendations"],
                                  publish_summary(result, chosen, day))

    @task
    def housekeeping() -> dict:
        """Remove staged tables and old rejected candidates; compact the embedding cache."""
        from pipeline.stages import stage_housekeeping

        return stage_housekeeping(SETTINGS, _night()[0])

    @task
    def report() -> dict:
        """The nightly report (Markdown + JSON), attached to tonight's MLflow run."""
        from pipeline.stages import stage_report

        return call_stage(stage_report, SETTINGS, _night()[0])

    embedded = embed()
    ingest() >> features() >> embedded
    candidate = train()
    embedded >> candidate
    chosen = select_model()
    [register(candidate), embedded] >> chosen
    shards = plan_scoring()
    chosen >> shards
    staged = recommend.partial(chosen=chosen).expand(shard=shards)
    embedded >> staged
    publish(staged, chosen) >> housekeeping() >> report()


nightly_recommendations()
