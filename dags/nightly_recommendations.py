"""nightly_recommendations: every night at 02:00 UTC, recommendations from the day that just closed.

Only wiring lives here: each task calls one stage function of `pipeline.nightly` and returns a small dict.
Heavy libraries (torch, transformers, duckdb, mlflow) are imported inside the stage functions, never at parse.
"""

from __future__ import annotations

import datetime as dt

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, Param, dag, get_current_context, task

from pipeline.config import load_settings
from pipeline.dag_support import data_date_from_context

SETTINGS = load_settings()

INTERACTIONS = Asset(name="nightly_recs_interactions", uri=(SETTINGS.lake_dir / "interactions").as_uri())
ITEM_EMBEDDINGS = Asset(name="nightly_recs_item_embeddings", uri=(SETTINGS.lake_dir / "item_embeddings").as_uri())
MODEL = Asset(name="nightly_recs_model", uri=f"mlflow-model://{SETTINGS.model_name}")
RECOMMENDATIONS = Asset(
    name="nightly_recs_recommendations", uri=(SETTINGS.lake_dir / "recommendations").as_uri()
)

DEFAULT_ARGS = {
    "owner": "nightly-recs",
    "retries": SETTINGS.task_retries,
    "retry_delay": dt.timedelta(seconds=SETTINGS.retry_delay_seconds),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(hours=1),
    "execution_timeout": dt.timedelta(minutes=SETTINGS.task_timeout_minutes),
}
GPU = {"pool": SETTINGS.gpu_pool, "queue": SETTINGS.gpu_queue}


def _night() -> tuple[dt.date, dict]:
    context = get_current_context()
    return data_date_from_context(context), context["params"]


@dag(
    dag_id="nightly_recommendations",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["recommendations", "nightly-recs"],
    doc_md=__doc__ + "\n\nData date: the day of `data_interval_start` (the run at 02:00 on D+1 processes D), "
    "or the `data_date` param. Rerunning a date replaces exactly what that date wrote.",
    params={
        "top_n": Param(SETTINGS.top_n, type="integer", minimum=1, maximum=1000,
                       description="Recommendations per user."),
        "retrain": Param(True, type="boolean",
                         description="Train a challenger tonight. False reuses the champion: ingest, embed new "
                                     "items, score."),
        "max_epochs": Param(None, type=["null", "integer"], minimum=1, maximum=1000,
                            description="Override the training epochs (empty = settings)."),
        "force_promote": Param(False, type="boolean",
                               description="Promote tonight's model even if it loses the gate (recorded as a "
                                           "forced promotion in the registry)."),
        "data_date": Param(None, type=["null", "string"], format="date",
                           description="Process this date (YYYY-MM-DD) instead of the closed interval's day."),
    },
)
def nightly_recommendations() -> None:
    @task(outlets=[INTERACTIONS])
    def ingest() -> dict:
        from pipeline.nightly import stage_ingest

        return stage_ingest(SETTINGS, _night()[0])

    @task
    def features() -> dict:
        from pipeline.nightly import stage_features

        return stage_features(SETTINGS, _night()[0])

    @task(outlets=[ITEM_EMBEDDINGS], **GPU)
    def embed() -> dict:
        from pipeline.nightly import stage_embed

        return stage_embed(SETTINGS, _night()[0])

    @task(**GPU)
    def train() -> dict:
        from pipeline.dag_support import skip_unless_retrain
        from pipeline.nightly import stage_train

        day, params = skip_unless_retrain(*_night())
        return stage_train(SETTINGS, day, params.get("max_epochs"))

    @task(outlets=[MODEL])
    def register(candidate: dict) -> dict:
        from pipeline.nightly import stage_register

        day, params = _night()
        return stage_register(SETTINGS, day, candidate["candidate_dir"], bool(params["force_promote"]),
                              get_current_context()["run_id"])

    @task(trigger_rule="all_done")
    def select_model() -> dict:
        from pipeline.nightly import stage_select_model

        day, params = _night()
        return stage_select_model(SETTINGS, day, bool(params["retrain"]))

    @task
    def recommend(model: dict) -> dict:
        from pipeline.nightly import stage_recommend

        day, params = _night()
        return stage_recommend(SETTINGS, day, int(params["top_n"]))

    @task(outlets=[RECOMMENDATIONS])
    def publish(staged: dict) -> dict:
        from pipeline.dag_support import attach_asset_extra
        from pipeline.nightly import stage_publish

        result = stage_publish(SETTINGS, _night()[0], staged["staged"], staged["top_n"], staged["model_version"])
        return attach_asset_extra(get_current_context(), RECOMMENDATIONS, result)

    @task
    def report() -> dict:
        from pipeline.nightly import stage_report

        return stage_report(SETTINGS, _night()[0])

    embedded = embed()
    ingest() >> features() >> embedded
    candidate = train()
    embedded >> candidate
    chosen = select_model()
    register(candidate) >> chosen
    staged = recommend(chosen)
    embedded >> staged
    publish(staged) >> report()


nightly_recommendations()
