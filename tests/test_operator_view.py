"""What an operator sees after two nights run by the CLI: the live MLflow run, the HTML report (decoded in Python
and, where Chromium is installed, rendered headless), housekeeping, and the model that loads from its artifact.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import SMALL_START, write_small_demo

from pipeline.catalog import Catalog
from pipeline.config import load_settings
from pipeline.tools.cli import main

NIGHTS = (SMALL_START + dt.timedelta(days=8), SMALL_START + dt.timedelta(days=9))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ENV = {"NIGHTLY_RECS_EMBEDDING_CACHE_MAX_PARTS": "1", "NIGHTLY_RECS_CANDIDATE_KEEP_DAYS": "0",
       "NIGHTLY_RECS_SYSTEM_METRICS_INTERVAL_S": "0.2"}


@pytest.fixture(scope="module")
def two_nights(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A home with the small demo source and two nights run by `nightly-recs night`."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("operator-home")
    mp.setenv("NIGHTLY_RECS_HOME", str(home))
    for key, value in ENV.items():
        mp.setenv(key, value)
    write_small_demo(home / "landing", days=12)
    for night in NIGHTS:
        assert main(["night", "--date", night.isoformat(), "--max-epochs", "3"]) == 0
    yield load_settings()
    mp.undo()


def ledger(settings: Any, day: dt.date, stage: str) -> dict[str, Any]:
    from pipeline import warehouse

    return warehouse.night_results(Catalog.of(settings).warehouse, day)[stage]


def inline_images(html: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """id -> (decoded PNG, other attributes) of every <img> with a data: URI."""
    found = {}
    for tag in re.findall(r"<img\b[^>]*>", html, flags=re.S):
        attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', tag))
        src = attrs.pop("src")
        assert src.startswith("data:image/png;base64,"), f"not an inline PNG: {src[:60]}"
        found[attrs["id"]] = (base64.b64decode(src.removeprefix("data:image/png;base64,"), validate=True), attrs)
    return found


# ---- housekeeping ------------------------------------------------------------------------------------------


def test_after_two_nights_staging_is_empty_and_the_cache_is_compact(two_nights: Any) -> None:
    catalog = Catalog.of(two_nights)
    assert not any(p.is_file() for p in catalog.staging_root.rglob("*")), "staged tables outlive their publish"
    assert len(list(catalog.embedding_cache.glob("*.parquet"))) <= 1
    counts = ledger(two_nights, NIGHTS[1], "housekeeping")
    assert counts["staging_files_removed"] >= 1 and counts["cache_parts_after"] <= 1
    first_night = catalog.candidates_dir(NIGHTS[0])
    for candidate in first_night.iterdir() if first_night.is_dir() else []:
        assert (candidate / "gate.json").is_file(), f"{candidate}: a rejected candidate older than 0 days is kept"


def test_compaction_keeps_one_vector_per_text(tmp_path: Path) -> None:
    import numpy as np
    import pyarrow.parquet as pq

    from pipeline.embed import _write_cache_part, load_cache
    from pipeline.housekeeping import compact_embedding_cache

    for start in (0, 2, 4):  # overlapping parts: texts 2..3 and 4..5 appear twice (with the same vector)
        rows = [(f"hash-{i}", f"item-{i}") for i in range(start, start + 4)]
        vectors = np.array([[i, i + 0.5, -i] for i in range(start, start + 4)], np.float32)
        _write_cache_part(tmp_path, "enc", rows, vectors)
    before = load_cache(tmp_path, "enc")
    assert compact_embedding_cache(tmp_path, max_parts=3) == {"cache_parts_before": 3, "cache_parts_after": 3}
    assert compact_embedding_cache(tmp_path, max_parts=2) == {"cache_parts_before": 3, "cache_parts_after": 1}
    after = load_cache(tmp_path, "enc")
    assert sorted(after) == sorted(before) == [f"hash-{i}" for i in range(8)]
    assert all(np.array_equal(after[h], before[h]) for h in before)
    assert pq.read_table(next(tmp_path.glob("*.parquet"))).num_rows == 8, "one row per text"


# ---- the HTML report ---------------------------------------------------------------------------------------


def test_html_report_is_self_contained_and_its_plots_decode(two_nights: Any) -> None:
    from PIL import Image

    path = Catalog.of(two_nights).report(NIGHTS[1], ".html")
    html = path.read_text(encoding="utf-8")
    assert "<script" not in html.lower() and not re.search(r'(src|href)="https?:', html), "must open offline"
    images = inline_images(html)
    assert {"plot-training", "plot-popularity", "plot-trends"} <= set(images)
    for name, (png, _) in images.items():
        assert png.startswith(PNG_SIGNATURE), name
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
            assert img.size[0] > 200 and img.size[1] > 100, (name, img.size)
    assert images["plot-trends"][1]["data-points"] == "2", "one point per night after two nights"
    trend_table = html[html.index('<table id="trends">'):]
    assert [d for d in (n.isoformat() for n in NIGHTS) if f"<td>{d}</td>" in trend_table] == [n.isoformat()
                                                                                           for n in NIGHTS]
    for heading in ("Data", "Evaluation", "Gate", "Training", "Published", "Sample recommendations",
                    "Housekeeping", "Trends"):
        assert f"<h2>{heading}" in html, heading
    assert "most_popular" in html and "(not in catalog)" not in html


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="headless Chromium is not installed (make browser installs it "
                                                "with apt-get); the report's images are still decoded in Python")
def test_html_report_renders_in_a_headless_browser(two_nights: Any, tmp_path: Path) -> None:
    from PIL import Image

    page = Catalog.of(two_nights).report(NIGHTS[1], ".html")
    shot = tmp_path / "report.png"
    subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as img:
        rgb = img.convert("RGB")
        assert rgb.size == (1280, 4000)
        pixels = rgb.getdata()
    # The page itself is black on white; only the rendered plots bring colour (matplotlib's blue, orange, green).
    coloured = sum(1 for r, g, b in pixels if max(r, g, b) - min(r, g, b) > 80)
    assert coloured > 2000, f"only {coloured} coloured pixels: the plots did not render"


# ---- the MLflow run ----------------------------------------------------------------------------------------


def _client(settings: Any) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.paths.mlflow_uri, registry_uri=settings.paths.mlflow_uri)


def test_training_run_is_live_with_lineage_inputs_and_system_metrics(two_nights: Any) -> None:
    client = _client(two_nights)
    train, register = ledger(two_nights, NIGHTS[1], "train"), ledger(two_nights, NIGHTS[1], "register")
    assert train["run_id"] == register["run_id"], "register continues the training's run"
    run = client.get_run(train["run_id"])
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "loss")
    assert [m.step for m in losses] == list(range(1, int(train["epochs"]) + 1))
    assert len({m.timestamp for m in losses}) == len(losses), "epochs logged as they happen, not at once"
    assert {"lr", "valid_ndcg_at_10", "seconds"} <= {k for k in run.data.metrics}
    assert any(k.startswith("system/") for k in run.data.metrics), sorted(run.data.metrics)
    assert {"test_model_ndcg_at_10", "test_most_popular_ndcg_at_10", "gate_promoted"} <= set(run.data.metrics)
    if register["previous_champion"]:
        assert "test_champion_ndcg_at_10" in run.data.metrics
    tags = run.data.tags
    assert tags["data_date"] == NIGHTS[1].isoformat() and tags["encoder_id"] == ledger(two_nights, NIGHTS[1],
                                                                                     "embed")["encoder"]
    assert tags["warm_start_from"] == (train["warm_start_from"] or "none")
    assert run.data.params["model.max_len"] and run.data.params["n_users"]
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert f"lake.interactions@{NIGHTS[1]}" in inputs and f"features.user_sequences@{NIGHTS[1]}" in inputs
    assert '"num_rows"' in inputs[f"features.user_sequences@{NIGHTS[1]}"].dataset.profile
    report = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert f"report/{NIGHTS[1]}.html" in report


def test_a_failed_training_leaves_a_failed_run(two_nights: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline import registry
    from pipeline.stages import stage_train

    def broken(*args: object, **kwargs: object) -> None:
        raise MemoryError("injected: out of memory in training")

    monkeypatch.setattr("pipeline.recsys.candidate.train_candidate", broken)
    with pytest.raises(MemoryError, match="injected"):
        stage_train(two_nights, NIGHTS[1], 1, dag_run_id="manual__failing")
    client = _client(two_nights)
    runs = client.search_runs([registry.experiment_id(two_nights)], "tags.dag_run_id = 'manual__failing'")
    assert [r.info.status for r in runs] == ["FAILED"]
    assert runs[0].data.tags["error"].startswith("MemoryError: injected")


# ---- the logged model --------------------------------------------------------------------------------------


def _model_dir(settings: Any, tmp_path: Path) -> Path:
    import mlflow

    from pipeline import registry

    registry.experiment_id(settings)
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.serving.model_name}/1", dst_path=str(tmp_path)))


def test_logged_model_ships_its_code_and_loads_outside_the_repository(two_nights: Any, tmp_path: Path) -> None:
    model_dir = _model_dir(two_nights, tmp_path / "model")
    requirements = (model_dir / "requirements.txt").read_text()
    assert "nightly-recs" not in requirements and re.search(r"^torch==", requirements, flags=re.M)
    assert (model_dir / "code" / "pipeline" / "registry.py").is_file()
    assert (model_dir / "input_example.json").is_file()
    script = ("import sys, mlflow, json\n"
              "model = mlflow.pyfunc.load_model(sys.argv[1])\n"
              "import pipeline\n"
              "print(pipeline.__file__)\n"
              "print(json.dumps(model.predict([['__unknown__']])))\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", script, str(model_dir)], cwd=tmp_path, env=env, check=True,
                          capture_output=True, text=True, timeout=300)
    module_file, predicted = done.stdout.strip().splitlines()[-2:]
    assert Path(module_file).resolve().is_relative_to(model_dir.resolve()), "the model's own code was used"
    assert predicted == "[[]]"


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NIGHTLY_RECS_VENV_TESTS") != "1",
                    reason="builds a virtualenv from the model's requirements (network, minutes): "
                           "set NIGHTLY_RECS_VENV_TESTS=1 (`make test-venv`)")
def test_logged_model_loads_in_a_fresh_virtualenv(two_nights: Any, tmp_path: Path) -> None:
    model_dir = _model_dir(two_nights, tmp_path / "model")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(model_dir / "requirements.txt")],
                   check=True, timeout=1800)
    script = "import sys, mlflow; print(mlflow.pyfunc.load_model(sys.argv[1]).predict([['__unknown__']]))"
    done = subprocess.run([str(python), "-c", script, str(model_dir)], cwd=tmp_path, check=True,
                          capture_output=True, text=True, timeout=600)
    assert done.stdout.strip().endswith("[[]]")

