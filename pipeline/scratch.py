"""Per-task scratch space: every stage runs with a fresh local folder for its temporary files, removed after it.

A worker that shares no disk with the others keeps nothing between tasks: whatever a stage hands on goes to the
catalog's locations (a URI on object storage in a shared-nothing deployment), and its temporary files (DuckDB
spills, downloaded candidate folders, MLflow's staging of artifacts) go to the folder `task_scratch` creates
under `Catalog.scratch_root` (setting `scratch_dir`). The folder is the process's TMPDIR while the stage runs,
so libraries that use `tempfile` write there too, and it is removed when the stage ends, failed or not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pipeline.catalog import Catalog

log = logging.getLogger(__name__)


@contextlib.contextmanager
def task_scratch(catalog: Catalog) -> Iterator[Path]:
    """A fresh scratch folder, made the process's temporary folder until the block ends, then removed."""
    folder = catalog.new_scratch_dir()
    folder.mkdir(parents=True)
    matplotlib_config = _matplotlib_config(folder)
    saved_env, saved_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        if matplotlib_config:
            os.environ.pop("MPLCONFIGDIR", None)
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(folder, ignore_errors=True)
        log.debug("scratch folder %s removed", folder)


def _matplotlib_config(folder: Path) -> bool:
    """Point matplotlib's config and cache at the task's scratch folder for the task when its default (under
    the user's home) cannot be written, as on a worker with a read-only home (matplotlib would otherwise make a
    temporary folder of its own and try to remove it again at exit); True when it did."""
    if "MPLCONFIGDIR" in os.environ:
        return False
    default = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "matplotlib"
    existing = next(p for p in (default, *default.parents) if p.exists())
    if os.access(existing, os.W_OK):
        return False
    os.environ["MPLCONFIGDIR"] = str(folder / "matplotlib")
    return True
