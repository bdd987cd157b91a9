"""The vocabulary of the settings (pipeline.config): the fixed choices a setting may take and the defaults
of the source mappings. No logic; pipeline.config re-exports every name."""

from __future__ import annotations

from enum import StrEnum

# The baselines of the evaluation (recsys.evaluate.BASELINES) the gate may compare with.
GATE_BASELINES = ("most_popular", "recent_popular", "item_transition")
DEFAULT_EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")
# Placeholders a text template may use; sql/marts/item_catalog.sql fills each one from the column of that name.
TEMPLATE_FIELDS = ("title", "description", "brand", "genres", "categories", "tags")
DEFAULT_TEXT_TEMPLATE = "{title}. {genres}. {categories}. {brand}. {tags}. {description}"
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
    "removed": "removed",  # optional: true marks the item discontinued as of this version
}


class ConfigError(ValueError):
    """One or more settings are missing or invalid; the message lists each."""


class SourceFormat(StrEnum):
    JSONL = "jsonl"
    CSV = "csv"
    PARQUET = "parquet"


class TimestampFormat(StrEnum):
    ISO = "iso"
    EPOCH_S = "epoch_s"
    EPOCH_MS = "epoch_ms"


class VolumeCheck(StrEnum):
    FAIL = "fail"
    WARN = "warn"


class ItemRepr(StrEnum):
    ID = "id"
    TEXT = "text"
    ID_TEXT = "id+text"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    BF16 = "bf16"
