"""The CLI without Airflow: a tiny whole night, single stages from the shell, and the degraded mode."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import duckdb
import pytest
from conftest import SMALL_START, write_small_demo

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.tools.cli import main

NIGHT = SMALL_START + dt.timedelta(days=9)


def published(home: Path, day: dt.date) -> list[tuple]:
    with duckdb.connect(str(Catalog.of(load_settings()).warehouse), read_only=True) as con:
        return con.execute("select user_id, rank, model_version from recommendations where dt = $d "
                           "order by user_id, rank", {"d": day}).fetchall()


def stage_statuses(day: dt.date) -> dict[str, str]:
    with duckdb.connect(str(Catalog.of(load_settings()).warehouse), read_only=True) as con:
        rows = con.execute("select stage, status from runs where dt = $d order by finished_at", {"d": day}).fetchall()
    return dict(rows)


@pytest.fixture(scope="module")
def night_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the small demo source and one night run by `nightly-recs night`."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("cli-home")
    mp.setenv("NIGHTLY_RECS_HOME", str(home))
    write_small_demo(home / "landing", days=12)
    assert main(["night", "--date", NIGHT.isoformat(), "--max-epochs", "2"]) == 0
    yield home
    mp.undo()


def test_night_runs_every_stage_and_publishes(night_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night_home))
    statuses = stage_statuses(NIGHT)
    assert statuses == {s: "ok" for s in ("ingest", "features", "embed", "train", "register", "select_model",
                                          "recommend", "publish", "housekeeping", "report")}
    rows = published(night_home, NIGHT)
    users = {u for u, _, _ in rows}
    assert users and len(rows) == 10 * len(users)
    assert {v for _, _, v in rows} == {"1"}


def test_single_stages_from_the_shell_print_their_result(
    night_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night_home))
    assert main(["ingest", "--date", NIGHT.isoformat()]) == 0
    ingest = json.loads(capsys.readouterr().out)
    assert ingest["events"]["status"] == "noop", "re-ingesting unchanged files is a no-op"

    assert main(["recommend", "--date", NIGHT.isoformat(), "--top-n", "4"]) == 0
    staged = json.loads(capsys.readouterr().out)
    assert staged["top_n"] == 4 and Path(staged["staged"]).is_file()
    assert main(["publish", "--date", NIGHT.isoformat()]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == staged["rows"]
    rows = published(night_home, NIGHT)
    assert {r for _, r, _ in rows} == {1, 2, 3, 4}


def test_a_stage_without_its_input_says_which_command_to_run(
    night_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night_home))
    later = NIGHT + dt.timedelta(days=1)
    with pytest.raises(SystemExit, match=f"no successful `recommend` for {later}.*nightly-recs recommend"):
        main(["publish", "--date", later.isoformat()])


def test_night_degrades_on_any_training_failure(night_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NIGHTLY_RECS_HOME", str(night_home))
    later = NIGHT + dt.timedelta(days=1)

    def broken_training(*args: object, **kwargs: object) -> None:
        raise MemoryError("injected: out of memory in training")

    monkeypatch.setattr("pipeline.recsys.candidate.train_candidate", broken_training)
    assert main(["night", "--date", later.isoformat()]) == 0

    assert stage_statuses(later)["train"] == "failed"
    assert {v for _, _, v in published(night_home, later)} == {"1"}, "served by the previous champion"
    report = json.loads(Catalog.of(load_settings()).report(later, ".json").read_text())
    assert report["select_model"]["degraded"] is True
