"""forget_users: erase users everywhere on request (the right to be forgotten); the Airflow way to run
`nightly-recs forget`.

Trigger it with `user_ids` (a list of ids), a `reason` (a ticket number, say) and, optionally, the `requester`
(default: the user who triggered the run). One task calls `pipeline.stages.run_forget`: a tombstone per user
(keyed hash of the id, requester, time, reason) in the warehouse, then every copy the pipeline made rewritten
without them (lake, quarantine, marts, staging, the published table, reports, MLflow artifacts and tags, the
local Airflow's log files). A failed run leaves the tombstones pending, which stops the nightly ingest and training
until a retry or a new run with the same ids completes it. Its return value names users only by their hashes.

The ids stay in this run's conf in Airflow's metadata database: delete the run once it has succeeded (see the
README's "Erasure" section).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, get_current_context, task

from pipeline.config import load_settings
from pipeline.dag_support import default_args

SETTINGS = load_settings()


@dag(
    dag_id="forget_users",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args(SETTINGS),
    tags=["nightly-recs", "erasure"],
    doc_md=__doc__,
    params={
        "user_ids": Param(
            [], type="array", items={"type": "string", "minLength": 1}, minItems=1, title="User ids",
            description="The users to erase, one id per entry, exactly as the source writes them.",
        ),
        "requester": Param(
            None, type=["null", "string"], title="Requester",
            description="Who asks (recorded on each tombstone); empty: the user who triggers this run.",
        ),
        "reason": Param(
            "", type="string", title="Reason",
            description="Why (recorded on each tombstone), e.g. the ticket of the erasure request.",
        ),
    },
)
def forget_users() -> None:
    @task
    def forget() -> dict:
        """Record the tombstones and rewrite every copy without the users (pipeline.erasure)."""
        from pipeline.dag_support import call_stage, requester_of
        from pipeline.stages import run_forget

        context = get_current_context()
        params = context["params"]
        return call_stage(run_forget, SETTINGS, list(params["user_ids"]), requester_of(context), params["reason"])

    forget()


forget_users()
