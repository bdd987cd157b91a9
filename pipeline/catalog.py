"""The data catalog: the one module that knows where every dataset lives.

Every location is a function of the path settings (and of the data date where a dataset is keyed by it).
Stages ask the catalog; nothing else composes lake, landing, model, report or warehouse paths, so moving a
dataset (for example the lake to object storage) touches this file only. `tests/test_architecture.py` checks
that no other module builds these paths.

Layout under the state home (defaults; landing, lake, warehouse and MLflow can each be pointed elsewhere):

    landing/events/<D>.jsonl ...           the source's daily drops (events/, items/)
    lake/interactions/                     accepted events (Delta table, partitioned by dt; `lake_uri` moves
    lake/items/                            item versions       the four tables to object storage)
    lake/quarantine/                       rejected rows with their reason (partitioned by dt and kind)
    lake/_tmp/<host>-<pid>-<id>/           a task's scratch folder (TMPDIR, DuckDB spills), removed after it
                                           (setting `scratch_dir` moves them; pipeline.scratch)
    lake/features/dt=D/<mart>.parquet      the night's marts (sql/marts/); under `lake_uri` when set
    lake/features/dt=D/item_embeddings.parquet   the night's catalog embeddings, one row per item (idem)
    lake/item_embeddings/                  the embedding cache, keyed by (encoder, text hash) (idem)
    lake/recommendations/                  the published table (Delta, partitioned by dt)
    models/dt=D/<candidate>/               a night's candidate models (bundle, metrics, curves)  } under `lake_uri`
    staging/dt=D/                          scored tables waiting for validation                  } when set
    reports/<D>.md, <D>.json, <D>.html     the nightly report (Markdown, JSON, HTML with plots)  }
    backtest/<run>/<variant>/              `nightly-recs backtest`: a whole state home per variant
    locks/publish-dt=D.lock                one writer per published date (flock)
    warehouse.duckdb                       published tables and ledgers (or PostgreSQL: warehouse_uri)
    mlflow/mlflow.db, mlflow/artifacts/    tracking and registry
    airflow/                               the local Airflow home
    erasure/key                            the per-home secret that keys tombstones' hashes (pipeline.erasure)
"""

from __future__ import annotations

import datetime as dt
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from pipeline import storage
from pipeline.config import PathSettings, Settings

LAKE_TABLES = ("interactions", "items", "quarantine", "recommendations")
DEMO_MARKER = ".demo.json"
NIGHT_EMBEDDINGS = "item_embeddings"


def _dt(data_date: dt.date) -> str:
    return f"dt={data_date.isoformat()}"


def partition_date(folder: Path | str) -> dt.date | None:
    """The date of a date-keyed folder (`dt=YYYY-MM-DD`, a path or a URI), None for any other name."""
    prefix, _, day = storage.name_of(folder).partition("=")
    if prefix != "dt":
        return None
    try:
        return dt.date.fromisoformat(day)
    except ValueError:
        return None


def landing_path(landing: Path, kind: str, data_date: dt.date, suffix: str = ".jsonl") -> Path:
    """The source's drop of one kind ('events' or 'items') for one date, under a landing folder (tools that
    write sources, such as the demo and the importers, use this with a folder of their own)."""
    assert kind in ("events", "items"), f"unknown landing kind {kind!r}"
    return landing / kind / f"{data_date.isoformat()}{suffix}"


@dataclass(frozen=True)
class Catalog:
    """Locations of every dataset, from the path settings."""

    paths: PathSettings

    @classmethod
    def of(cls, settings: Settings) -> Catalog:
        return cls(settings.paths)

    # --- landing (the source) ---
    @property
    def landing(self) -> Path:
        return self.paths.landing_dir

    def landing_dir(self, kind: str) -> Path:
        """Folder of one kind of drop: 'events' or 'items'."""
        assert kind in ("events", "items"), f"unknown landing kind {kind!r}"
        return self.paths.landing_dir / kind

    def landing_file(self, kind: str, data_date: dt.date, suffix: str = ".jsonl") -> Path:
        return landing_path(self.paths.landing_dir, kind, data_date, suffix)

    @property
    def demo_marker(self) -> Path:
        return self.paths.landing_dir / DEMO_MARKER

    # --- lake ---
    @property
    def lake(self) -> Path:
        """The local lake folder: the tables, marts and embeddings when `lake_uri` is not set; scratch always."""
        return self.paths.lake_dir

    @property
    def lake_root(self) -> Path | str:
        """Where the lake's tables live: `lake_uri` (e.g. s3://bucket/lake) when set, else the lake folder."""
        return self.paths.lake_uri or self.paths.lake_dir

    def lake_table(self, table: str) -> Path | str:
        """The Delta table of a lake table (pipeline.lake reads and writes it): a local folder or a URI."""
        assert table in LAKE_TABLES, f"unknown lake table {table!r}"
        return storage.child(self.lake_root, table)

    def publish_lock(self, data_date: dt.date) -> Path:
        """The lock file that serialises publishes of one date (on the local state home, not in the lake:
        flock needs a local filesystem and readers of the lake never see it)."""
        return self.paths.home / "locks" / f"publish-{_dt(data_date)}.lock"

    @property
    def scratch_root(self) -> Path:
        """Where tasks' scratch folders live (setting `scratch_dir`, default the lake folder's `_tmp`): the only
        local folder a night writes to when every other location is a URI (see pipeline.scratch)."""
        return self.paths.scratch_dir or self.paths.lake_dir / "_tmp"

    def new_scratch_dir(self) -> Path:
        """A fresh folder for one job's temporary files (DuckDB spills), named `<host>-<pid>-<id>` so a later job
        can tell one left by a killed process; the job removes it."""
        return self.scratch_root / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex}"

    # --- features and embeddings (under lake_root: on object storage with the tables when lake_uri is set) ---
    @property
    def features_root(self) -> Path | str:
        """Every night's marts, one `dt=D` folder per date: a local folder, or a URI under `lake_uri`."""
        return storage.child(self.lake_root, "features")

    def features_dir(self, data_date: dt.date) -> Path | str:
        return storage.child(self.features_root, _dt(data_date))

    def mart(self, data_date: dt.date, name: str) -> Path | str:
        """A mart's Parquet file (pipeline.storage reads and writes it): a local path or a URI."""
        return storage.child(self.features_dir(data_date), f"{name}.parquet")

    def night_embeddings(self, data_date: dt.date) -> Path | str:
        """The catalog's text embeddings for the night, one row per item of item_catalog."""
        return self.mart(data_date, NIGHT_EMBEDDINGS)

    @property
    def embedding_cache(self) -> Path | str:
        """The embedding cache's folder of Parquet parts: a local folder, or a URI under `lake_uri`."""
        return storage.child(self.lake_root, "item_embeddings")

    @staticmethod
    def new_cache_part(cache: Path | str) -> Path | str:
        """A fresh part file in an embedding cache folder (its writers never overwrite each other)."""
        return storage.child(cache, f"part-{uuid.uuid4().hex}.parquet")

    # --- models, staging, reports: under `lake_uri` when set (a task on another worker reads them), else home ---
    def _shared(self, name: str) -> Path | str:
        return storage.child(self.paths.lake_uri, name) if self.paths.lake_uri else self.paths.home / name

    @property
    def candidates_root(self) -> Path | str:
        """Every night's candidate folders, one `dt=D` folder per date."""
        return self._shared("models")

    def candidates_dir(self, data_date: dt.date) -> Path | str:
        return storage.child(self.candidates_root, _dt(data_date))

    def new_candidate(self, data_date: dt.date) -> Path | str:
        """A fresh folder for one training of the night (retries never overwrite each other)."""
        return storage.child(self.candidates_dir(data_date), uuid.uuid4().hex[:12])

    @property
    def staging_root(self) -> Path | str:
        """Every night's staged tables, one `dt=D` folder per date: under `lake_uri` when set (a publish on
        another worker reads them), else under the home."""
        return self._shared("staging")

    def staging_dir(self, data_date: dt.date) -> Path | str:
        return storage.child(self.staging_root, _dt(data_date))

    def new_staged_recommendations(self, data_date: dt.date) -> Path | str:
        return storage.child(self.staging_dir(data_date), f"recommendations-{uuid.uuid4().hex}.parquet")

    @property
    def reports_dir(self) -> Path | str:
        return self._shared("reports")

    def report(self, data_date: dt.date, suffix: str) -> Path | str:
        """The nightly report: suffix '.md', '.json' or '.html'."""
        return storage.child(self.reports_dir, f"{data_date.isoformat()}{suffix}")

    @property
    def backtest_root(self) -> Path:
        """Where `nightly-recs backtest` keeps a state home per variant (never the home's own state)."""
        return self.paths.home / "backtest"

    def consumer_summary_dir(self) -> Path:
        return self.paths.home / "consumer"

    # --- services ---
    @property
    def warehouse(self) -> Path | str:
        """The warehouse: the PostgreSQL URI of `warehouse_uri` when set, else the DuckDB file."""
        return self.paths.warehouse_uri or self.paths.warehouse_path

    @property
    def mlflow_uri(self) -> str:
        return self.paths.mlflow_uri

    @property
    def mlflow_dir(self) -> Path:
        return self.paths.home / "mlflow"

    @property
    def mlflow_artifacts(self) -> Path:
        """The local artifact folder: a local backend's experiments keep their artifacts here."""
        return self.mlflow_dir / "artifacts"

    @property
    def mlflow_is_local(self) -> bool:
        """Whether tracking is a local database or folder (not a tracking server)."""
        return self.paths.mlflow_uri.startswith(("sqlite:", "file:", "/"))

    @property
    def mlflow_artifact_location(self) -> Path | str | None:
        """Where a new experiment keeps its artifacts: `mlflow_artifacts_uri` when set (e.g. s3://bucket/mlflow),
        the home's mlflow/artifacts folder for a local backend, else None (the tracking server's default)."""
        if self.paths.mlflow_artifacts_uri:
            return self.paths.mlflow_artifacts_uri
        return self.mlflow_artifacts if self.mlflow_is_local else None

    @property
    def airflow_home(self) -> Path:
        return self.paths.home / "airflow"

    @property
    def airflow_run_logs(self) -> Path:
        """Where `nightly-recs dag-run` keeps the output of each run."""
        return self.airflow_home / "runs"

    def airflow_run_log(self, data_date: dt.date) -> Path:
        return self.airflow_run_logs / f"{data_date.isoformat()}.log"

    # --- erasure: where a user's data can be (pipeline.erasure) ---
    @property
    def erasure_key(self) -> Path:
        """The per-home secret that keys the hashes of erased users' ids (pipeline.erasure.identity)."""
        return self.paths.home / "erasure" / "key"

    def parquet_files(self) -> list[Path | str]:
        """Every Parquet data file of the local lake folder (marts, caches) and of staging, outside the lake's
        Delta tables (pipeline.lake rewrites those), plus the marts and the embedding cache on object storage
        when `lake_uri` is set; temporary files (`.<name>.<id>.tmp`) never match."""
        tables = {self.paths.lake_dir / table for table in LAKE_TABLES}
        roots = [root for root in (self.paths.lake_dir, self.staging_root) if isinstance(root, Path)]
        found: list[Path | str] = sorted(p for root in roots if root.is_dir() for p in root.rglob("*.parquet")
                                         if not p.name.startswith(".") and not tables.intersection(p.parents))
        if self.paths.lake_uri:
            found += [f for root in (self.features_root, self.embedding_cache, self.staging_root)
                      for f in storage.list_files(root, ".parquet", recursive=True)]
        return found

    def text_roots(self) -> list[Path]:
        """Folders of files that can quote a user id in text: reports, candidate folders, MLflow artifacts, the
        local Airflow's logs and dag-run logs, consumer summaries."""
        return [self.reports_dir, self.candidates_root, self.mlflow_artifacts, self.airflow_home / "logs",
                self.airflow_run_logs, self.consumer_summary_dir()]
