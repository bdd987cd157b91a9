"""Settings: grouped sections, every invalid value reported at once naming the setting and its source."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import SECTIONS, ConfigError, load_settings

# One invalid value per section, as an operator would type it in the environment.
BAD_ENV = {
    "ingest": ("NIGHTLY_RECS_QUARANTINE_THRESHOLD", "1.5", "ingest.quarantine_threshold"),
    "model": ("NIGHTLY_RECS_ITEM_REPR", "ids", "model.item_repr"),
    "training": ("NIGHTLY_RECS_WARM_START", "ture", "training.warm_start"),
    "serving": ("NIGHTLY_RECS_GATE_TOLERANCE", "nan", "serving.gate_tolerance"),
    "airflow": ("NIGHTLY_RECS_TASK_RETRIES", "-1", "airflow.task_retries"),
    "operations": ("NIGHTLY_RECS_EMBEDDING_CACHE_MAX_PARTS", "0", "operations.embedding_cache_max_parts"),
}


def test_defaults_load_into_sections(tmp_path: Path) -> None:
    s = load_settings(env={}, home=tmp_path)
    assert s.paths.lake_dir == tmp_path.resolve() / "lake"
    assert s.serving.top_n == 10 and s.training.max_epochs == 30 and s.model.item_repr == "id+text"
    assert set(SECTIONS) == {"paths", "ingest", "model", "training", "serving", "airflow",
                             "operations"}


@pytest.mark.parametrize("section", sorted(BAD_ENV))
def test_a_bad_value_in_each_section_names_the_setting_and_the_variable(tmp_path: Path, section: str) -> None:
    key, value, label = BAD_ENV[section]
    with pytest.raises(ConfigError, match=rf"{label}: .*from environment variable {key}") as err:
        load_settings(env={key: value}, home=tmp_path)
    assert str(err.value).count("\n") == 1, "exactly one error is reported for one bad value"


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    env = {key: value for key, value, _ in BAD_ENV.values()}
    with pytest.raises(ConfigError) as err:
        load_settings(env=env, home=tmp_path)
    for _, _, label in BAD_ENV.values():
        assert label in str(err.value)


def test_toml_sections_and_flat_keys_with_the_file_named_in_errors(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('top_n = 20\n[training]\nmax_epochs = 5\n[ingest]\ncsv_delimiter = ";"\n')
    s = load_settings(env={}, home=tmp_path)
    assert (s.serving.top_n, s.training.max_epochs, s.ingest.csv_delimiter) == (20, 5, ";")

    (tmp_path / "settings.toml").write_text('[serving]\ntop_n = 0\nmax_epochs = 3\n')
    with pytest.raises(ConfigError) as err:
        load_settings(env={}, home=tmp_path)
    message = str(err.value)
    assert "serving.top_n" in message and "settings.toml [serving]" in message
    assert "serving.max_epochs: belongs to section [training]" in message


def test_unknown_settings_and_home_in_the_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text('top_m = 20\nhome = "/elsewhere"\n')
    with pytest.raises(ConfigError, match=r"top_m: unknown setting .*\n.*home: set it with NIGHTLY_RECS_HOME"):
        load_settings(env={}, home=tmp_path)


def test_environment_beats_the_file_and_overrides_beat_both(tmp_path: Path) -> None:
    (tmp_path / "settings.toml").write_text("top_n = 20\nmax_len = 30\n")
    s = load_settings(env={"NIGHTLY_RECS_TOP_N": "25", "NIGHTLY_RECS_MAX_LEN": "40"}, home=tmp_path, max_len=60)
    assert (s.serving.top_n, s.model.max_len) == (25, 60)


def test_lists_mappings_and_case_insensitive_event_types_from_the_environment(tmp_path: Path) -> None:
    env = {"NIGHTLY_RECS_ALLOWED_EVENT_TYPES": "View, PURCHASE", "NIGHTLY_RECS_EVENT_COLUMNS":
           '{"user_id": "uid", "item_id": "sku", "timestamp": "ts"}'}
    s = load_settings(env=env, home=tmp_path)
    assert s.ingest.allowed_event_types == ("view", "purchase")
    assert s.ingest.event_columns["item_id"] == "sku"
    with pytest.raises(ConfigError, match="ingest.event_columns: .*not a JSON object"):
        load_settings(env={"NIGHTLY_RECS_EVENT_COLUMNS": "{uid"}, home=tmp_path)


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ingest: .*default_event_type 'like' is not in allowed_event_types"):
        load_settings(env={"NIGHTLY_RECS_DEFAULT_EVENT_TYPE": "like"}, home=tmp_path)
    with pytest.raises(ConfigError, match=r"model.text_template: .*must use only"):
        load_settings(env={"NIGHTLY_RECS_TEXT_TEMPLATE": "{title} {price}"}, home=tmp_path)
