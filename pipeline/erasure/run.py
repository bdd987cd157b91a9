"""The erasure entry: record the tombstones, then remove the users from every copy, then close the tombstones.

Order matters for a crash: the tombstones are written first (pending), so from that moment ingest drops the
users' new rows and the night's ingest and training refuse to run; each later step rewrites files atomically
and is idempotent, so rerunning `forget` with the same ids finishes the job and closes the tombstones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import sqlite3
from collections.abc import Iterable
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import Settings
from pipeline.erasure import rewrite, tombstones
from pipeline.erasure.identity import create_key, normalise, user_hash

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def forget(settings: Settings, user_ids: Iterable[str], requester: str, reason: str = "") -> dict[str, Any]:
    """Erase the users everywhere the pipeline keeps data (see pipeline.erasure); returns what was removed.
    The result and the logs name the users only by their tombstones (keyed hashes)."""
    ids = sorted({normalise(u) for u in user_ids})
    if not ids:
        raise ValueError("forget: no user ids given")
    if not requester.strip():
        raise ValueError("forget: the requester must be named (it is recorded on each tombstone)")
    catalog = Catalog.of(settings)
    key = create_key(catalog.erasure_key)
    hashes = [user_hash(key, u) for u in ids]
    added = tombstones.add_tombstones(catalog.warehouse, hashes, requester, reason, dt.datetime.now(dt.UTC))
    log.info("forget: %d tombstones (%d new) requested by %s", len(hashes), added, requester)
    result: dict[str, Any] = {"tombstones": hashes, "new_tombstones": added, "requester": requester}
    result["lake_rows_dropped"] = rewrite.erase_parquet(catalog, ids)
    result["warehouse_rows_deleted"] = tombstones.erase_users(catalog.warehouse, ids)
    result["warehouse_bytes"] = tombstones.compact(catalog.warehouse)
    result["reports_rewritten"] = rewrite.rewrite_reports(settings, ids)
    result.update(rewrite.redact_files(catalog, ids))
    result["mlflow_tags_redacted"] = redact_mlflow_tags(settings, ids)
    tombstones.mark_erased(catalog.warehouse, hashes, dt.datetime.now(dt.UTC))
    log.info("forget: done: %s", {k: v for k, v in result.items() if k != "tombstones"})
    return result


def redact_mlflow_tags(settings: Settings, user_ids: list[str]) -> int:
    """Blank the ids in the tags of model versions and runs (a gate reason may quote a user that broke a
    publishing rule); then VACUUM a SQLite tracking store so the old values leave its free pages."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline import registry

    experiment = registry.experiment_id(settings)
    client, name, changed = mlflow.MlflowClient(), settings.serving.model_name, 0
    try:
        versions = client.search_model_versions(filter_string=f"name = '{name}'")
    except MlflowException:
        versions = []
    for version in versions:
        for tag, value in version.tags.items():
            if (redacted := rewrite.redact_text(value, user_ids)) != value:
                client.set_model_version_tag(name, version.version, tag, redacted)
                changed += 1
    token = None
    while True:
        page = client.search_runs([experiment], max_results=1000, page_token=token)
        for run in page:
            for tag, value in run.data.tags.items():
                if (redacted := rewrite.redact_text(value, user_ids)) != value:
                    client.set_tag(run.info.run_id, tag, redacted)
                    changed += 1
        token = page.token
        if not token:
            break
    uri = settings.paths.mlflow_uri
    if changed and uri.startswith(SQLITE_PREFIX):
        with contextlib.closing(sqlite3.connect(uri.removeprefix(SQLITE_PREFIX))) as con:
            con.execute("vacuum")
    return changed
