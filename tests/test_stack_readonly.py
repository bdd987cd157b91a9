"""A night writes nowhere but its configured URIs and its scratch folder: with the lake on S3, the warehouse in
PostgreSQL and an MLflow server, it runs with a home folder it cannot write to (mounted read-only in a mount
namespace of its own where the machine allows it, so the kernel enforces it; compared before and after in any
case), publishes, and leaves the home unchanged and the scratch folder empty (every task removes its own
scratch folder)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import SMALL_START, stack_folder, write_small_demo

from pipeline import warehouse
from pipeline.tools.stack import BUCKET, Stack

NIGHT = SMALL_START + dt.timedelta(days=9)


READ_ONLY_HOME = 'mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" "$1" && shift && exec "$@"'


def read_only_mounts() -> bool:
    """Whether this process may mount a folder read-only in a new mount namespace (root on most Linux hosts)."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-m", "sh", "-c", 'mount --bind / / 2>/dev/null && echo ok'],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "ok"


def tree(folder: Path) -> list[tuple[str, int]]:
    """Every file and folder below `folder`, with file sizes."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob("*"))


@pytest.mark.stack
def test_a_night_on_the_stack_writes_nothing_outside_its_uris_and_scratch(
    stack: Stack, postgres_database: str
) -> None:
    base = stack_folder()  # readable by `nobody`, unlike pytest's private tmp_path
    try:
        landing, home, scratch = base / "landing", base / "home", base / "scratch"
        write_small_demo(landing, days=12)
        (home / ".config").mkdir(parents=True)  # a home with something in it, all read-only to the night
        (home / ".config" / "settings.txt").write_text("unchanged\n")
        scratch.mkdir()
        scratch.chmod(0o1777)
        for path in (landing, *landing.rglob("*")):
            path.chmod(0o755 if path.is_dir() else 0o644)
        before = tree(home)

        prefix = f"readonly-{uuid.uuid4().hex[:8]}"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("NIGHTLY_RECS_")},
            **stack.settings(),
            "HOME": str(home), "TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1",
            "NIGHTLY_RECS_HOME": str(home), "NIGHTLY_RECS_LANDING_DIR": str(landing),
            "NIGHTLY_RECS_SCRATCH_DIR": str(scratch), "NIGHTLY_RECS_LAKE_URI": f"s3://{BUCKET}/{prefix}",
            "NIGHTLY_RECS_WAREHOUSE_URI": postgres_database, "NIGHTLY_RECS_MLFLOW_URI": stack.mlflow_uri,
            "NIGHTLY_RECS_MODEL_NAME": f"nightly-recs-{prefix}",
        }
        command = [sys.executable, "-m", "pipeline.tools.cli", "night", "--date", NIGHT.isoformat(),
                   "--max-epochs", "2", "--force-promote"]
        if read_only_mounts():  # the kernel, not only the comparison below, keeps the night out of the home
            command = ["unshare", "-m", "sh", "-c", READ_ONLY_HOME, "sh", str(home), *command]
        done = subprocess.run(command, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-4000:]

        assert tree(home) == before, "the night wrote into the home folder"
        assert list(scratch.iterdir()) == [], f"scratch left behind: {sorted(scratch.rglob('*'))}"
        with warehouse.connect(postgres_database) as wh:
            [(rows,)] = wh.execute("select count(*) from recommendations where dt = $d", {"d": NIGHT}).fetchall()
        assert rows > 0
        pages = stack.s3_client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{prefix}/")
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        for folder in ("models/", "recommendations/_delta_log/", "features/"):
            assert any(k.startswith(f"{prefix}/{folder}") for k in keys), folder
        for suffix in (".json", ".md", ".html"):
            assert f"{prefix}/reports/{NIGHT.isoformat()}{suffix}" in keys
        assert any(k.endswith("/gate.json") for k in keys), "register wrote the gate decision beside the candidate"
    finally:
        shutil.rmtree(base, ignore_errors=True)
