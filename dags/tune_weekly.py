"""tune_weekly: every Sunday at 06:00 UTC, search the model's configuration within a budget (Optuna).

One task calls `pipeline.stages.stage_tune` on the last closed day's split (the nightly run has built its
features by then; the `data_date` param overrides it): a TPE study whose trials are pruned on the per-epoch
validation metric, stopped at `budget_minutes`, stored in MLflow as a `tune <date>` run with one nested run per
trial, the trials table and the best configuration (`tuned_config.json`).

The best configuration does not serve by itself: the next nightly run trains its candidate with it, and the gate
decides as for any candidate. Promoted, it stays (it is the champion's configuration); rejected, the nights go
back to the champion's configuration (see the README's "Tuning" section and `pipeline.tuning`).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, Param, dag, get_current_context, task

from pipeline.config import load_settings
from pipeline.dag_support import TUNE_CRON, default_args

SETTINGS = load_settings()
MAX_BUDGET_MINUTES = 8 * 60  # the task's timeout is this plus an hour (evaluation, MLflow), whatever the budget


@dag(
    dag_id="tune_weekly",
    schedule=CronTriggerTimetable(TUNE_CRON, timezone="UTC"),  # logical date = the run's own time
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(SETTINGS, MAX_BUDGET_MINUTES + 60),
    tags=["nightly-recs", "tuning"],
    doc_md=__doc__,
    params={
        "budget_minutes": Param(
            60, type="number", exclusiveMinimum=0, maximum=MAX_BUDGET_MINUTES, title="Budget (minutes)",
            description="Wall-clock time of the whole study; each trial gets budget / tune_trials at most.",
        ),
        "max_trials": Param(
            None, type=["null", "integer"], minimum=1, title="Max trials",
            description="Stop after this many trials even with time left; empty: the budget decides.",
        ),
        "data_date": Param(
            None, type=["null", "string"], format="date", title="Data date",
            description="Search on this day's split (YYYY-MM-DD) instead of the last closed day.",
        ),
    },
)
def tune_weekly() -> None:
    @task(pool=SETTINGS.airflow.gpu_pool, queue=SETTINGS.airflow.gpu_queue)
    def tune() -> dict:
        """Run the study and store it with its best configuration in MLflow, pending the next night's gate."""
        from pipeline.dag_support import call_stage, tune_date_from_context
        from pipeline.stages import stage_tune

        context = get_current_context()
        params = context["params"]
        return call_stage(stage_tune, SETTINGS, tune_date_from_context(context), float(params["budget_minutes"]),
                          params["max_trials"], None, context["run_id"])

    tune()


tune_weekly()
