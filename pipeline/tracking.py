"""The training's MLflow run, live: opened by the train stage before training starts, fed as training goes.

`training_run` opens the run (system metrics on), records its lineage as tags and its inputs as datasets, and
hands back a `LiveRun` whose `on_epoch` logs each epoch's metrics the moment the epoch ends (so the UI charts
them against real time while the night trains). A training that raises leaves its run FAILED with the error
as a tag and a text artifact. `registry.log_training(..., run_id=...)` continues the same run with the model,
the evaluation table and the registration; `log_gate` adds the gate's evidence (the champion re-evaluated on
tonight's split) as metrics the UI can compare across runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import logging
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import RunTag

from pipeline import lake, registry, storage
from pipeline.catalog import Catalog
from pipeline.config import Settings

log = logging.getLogger(__name__)

# The marts a training reads (recsys.data.load_night), logged as its input datasets.
TRAINING_MARTS = ("item_catalog", "user_sequences", "split_leave_one_out")


class PartitionDataset(MetaDataset):
    """A lake table's date or a mart as an MLflow dataset: its location and row count, no data loaded."""

    def __init__(self, location: Path | str, name: str, rows: int) -> None:
        self.rows = rows
        uri = location if isinstance(location, str) else location.resolve().as_uri()
        digest = hashlib.sha256(f"{uri}:{rows}".encode()).hexdigest()[:8]
        source = LocalArtifactDatasetSource(uri) if uri.startswith("file:") else resolve_dataset_source(uri)
        super().__init__(source, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.rows}

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self.profile)}


def night_inputs(catalog: Catalog, data_date: dt.date) -> list[tuple[PartitionDataset, str]]:
    """(dataset, context) of what tonight's training read: the night's lake partitions (what arrived) and the
    feature marts built from the lake (what the model saw)."""
    found: list[tuple[PartitionDataset, str]] = []
    for table in ("interactions", "items"):
        rows = lake.count(catalog, table, data_date)
        if rows:
            location = catalog.lake_table(table)
            uri = location if isinstance(location, str) else location.resolve().as_uri()
            found.append((PartitionDataset(f"{uri}?dt={data_date}", f"lake.{table}@{data_date}", rows), "source"))
    for mart in (*TRAINING_MARTS, "item_embeddings"):
        location = catalog.mart(data_date, mart)
        if storage.exists(location):
            rows = storage.parquet_metadata(location).num_rows
            found.append((PartitionDataset(location, f"features.{mart}@{data_date}", rows), "training"))
    return found


@dataclass
class LiveRun:
    """The open training run; `on_epoch` is train_model's callback."""

    run_id: str

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        metrics = registry.metric_dict({k: v for k, v in record.items() if k != "epoch"})
        mlflow.log_metrics(metrics, step=int(epoch), run_id=self.run_id)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.MlflowClient().log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_configs(self, model_config: Any, train_config: Any, data_date: dt.date) -> None:
        """The model and training configs as params, named as registry.run_params names them."""
        params = {**{f"model.{k}": v for k, v in dataclasses.asdict(model_config).items()},
                  **{f"train.{k}": v for k, v in dataclasses.asdict(train_config).items()},
                  "data_date": data_date.isoformat()}
        mlflow.log_params({k: str(v)[:6000] for k, v in params.items()}, run_id=self.run_id)


def lineage_tags(catalog: Catalog, data_date: dt.date, dag_run_id: str) -> dict[str, str]:
    """Where tonight's model comes from: the DAG run, and the text encoder whose vectors it saw (from the embed
    stage's ledger entry for the date)."""
    from pipeline import warehouse

    embed = warehouse.night_results(catalog.warehouse, data_date).get("embed") or {}
    return {"dag_run_id": dag_run_id, "encoder_id": str(embed.get("encoder") or "none")}


@contextlib.contextmanager
def training_run(settings: Settings, data_date: dt.date, tags: dict[str, str]) -> Iterator[LiveRun]:
    """Open tonight's training run (system metrics sampled every operations.system_metrics_interval_s), log its
    lineage tags and input datasets; on an exception, record the error and end the run FAILED."""
    experiment = registry.experiment_id(settings)
    mlflow.system_metrics.set_system_metrics_sampling_interval(settings.operations.system_metrics_interval_s)
    all_tags = {"data_date": data_date.isoformat(), **{k: v for k, v in tags.items() if v}}
    with mlflow.start_run(experiment_id=experiment, run_name=data_date.isoformat(), tags=all_tags,
                          log_system_metrics=True) as run:
        live = LiveRun(run.info.run_id)
        for dataset, context in night_inputs(Catalog.of(settings), data_date):
            mlflow.log_input(dataset, context=context, tags={"rows": str(dataset.rows)})
        log.info("MLflow run %s open for the training of %s (%s)", live.run_id, data_date,
                 Catalog.of(settings).mlflow_uri)
        try:
            yield live
        except BaseException as err:
            mlflow.set_tag("error", f"{type(err).__name__}: {err}"[:5000])
            mlflow.log_text(traceback.format_exc(), "error.txt")
            log.error("training failed; MLflow run %s ends FAILED", live.run_id)
            raise  # mlflow.start_run's context ends the run FAILED


def log_gate(settings: Settings, run_id: str, gate: Any) -> None:
    """The gate's evidence as metrics of the run: the champion's metrics on tonight's split
    (`test_champion_<metric>`), whether the challenger was promoted, and the previous champion's version."""
    registry.experiment_id(settings)  # points the client at the pipeline's tracking store
    metrics = {f"test_champion_{k}": v for k, v in (gate.champion_metrics or {}).items()}
    metrics["gate_promoted"] = float(gate.promoted)
    mlflow.log_metrics(registry.metric_dict(metrics), run_id=run_id)
    mlflow.MlflowClient().set_tag(run_id, "gate.previous_champion", str(gate.previous_champion or ""))
    mlflow.MlflowClient().set_tag(run_id, "gate.reason", gate.reason[:5000])
