"""Airflow on this machine: api-server, scheduler, dag-processor and triggerer on 127.0.0.1.

The services use the project's DAG folder, an Airflow home under the state folder (SQLite metadata DB,
LocalExecutor) and the virtual environment's `airflow`. They run in one process group of their own, so that
stopping them also stops the task processes they forked. `make airflow` (`nightly-recs airflow-standalone`)
runs them until Ctrl-C; the integration tests start and stop them with the same functions.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.catalog import Catalog
from pipeline.config import REPO_ROOT, Settings
from pipeline.dag_support import closed_day
from pipeline.tools.demo_source import ensure_demo_covers

log = logging.getLogger(__name__)

COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"
HEALTH_PATH = "/api/v2/monitor/health"


class AirflowStartError(RuntimeError):
    """A component could not start or did not become healthy in time."""


def jwt_secret(airflow_home: Path) -> str:
    """The JWT signing secret of this Airflow home: 64 random bytes, created once, readable only by the owner
    (kept across restarts so tokens and running tasks stay valid; Airflow warns below 64 bytes)."""
    path = airflow_home / "jwt_secret"
    if not path.is_file():
        airflow_home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(64))
    return path.read_text().strip()


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for an Airflow home under the state folder, with the project's DAGs and SQLite."""
    home = Catalog.of(settings).airflow_home
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "NIGHTLY_RECS_HOME": str(settings.home),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MLFLOW_TRACKING_URI": settings.paths.mlflow_uri,
    }


def next_data_date(settings: Settings) -> dt.date:
    """The day after the last published night; on a fresh home, two days before the last landing drop."""
    from pipeline import warehouse
    from pipeline.ingest import landing_files

    catalog = Catalog.of(settings)
    last = warehouse.latest_published(catalog.warehouse)
    if last is not None:
        day = last + dt.timedelta(days=1)
    else:
        dates = sorted(landing_files(catalog.landing_dir("events")))
        if not dates:
            raise SystemExit(f"no landing files in {catalog.landing_dir('events')}: run `nightly-recs demo-data`")
        day = dates[max(0, len(dates) - 3)]
    from pipeline.stages import DataDateError, check_data_date

    try:
        check_data_date(settings, day)  # the stages' own rule: only days that have ended (UTC)
    except DataDateError as err:
        raise SystemExit(f"the next night to run is {day}: {err}. Every closed day is published; run again "
                         "after midnight UTC") from err
    return day


def run_dag_logged(settings: Settings, data_date: dt.date, conf: dict[str, Any]) -> str:
    """Run the DAG in a child process whose (verbose) Airflow output goes to a log file; returns the state."""
    log_path = Catalog.of(settings).airflow_run_log(data_date)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    print(f"running the night of {data_date} through Airflow (log: {log_path}) ...", flush=True)
    cmd = [sys.executable, "-m", "pipeline.tools.cli", "dag-run", "--date", data_date.isoformat(), "--conf",
           json.dumps(conf), "--in-process"]
    with log_path.open("w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ}, check=False)
    lines = log_path.read_text(errors="replace").splitlines()
    state = next((ln.split(": ", 1)[1] for ln in reversed(lines) if ln.startswith("DAG run state: ")), "failed")
    if proc.returncode != 0 or state != "success":
        print("\n".join(lines[-40:]))
    return state


def run_dag(settings: Settings, data_date: dt.date, conf: dict[str, Any] | None = None) -> str:
    """Run the nightly DAG once through Airflow (dag.test, in process); returns the run's final state.

    Without the deadline alert: Airflow 3.3's dag.test() fails a successful run of a DAG that has one (it
    looks the alerts up by the serialized dict instead of their id); the scheduler handles them."""
    os.environ.update(airflow_env(settings))
    os.environ["NIGHTLY_RECS_PUBLISH_DEADLINE_MINUTES"] = "0"
    Catalog.of(settings).airflow_home.mkdir(parents=True, exist_ok=True)
    if not (Catalog.of(settings).airflow_home / "airflow.db").is_file():
        subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True,
                       env={**os.environ}, stdout=subprocess.DEVNULL)
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags" / "nightly_recommendations.py"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    dag = bag.get_dag("nightly_recommendations")
    logical = dt.datetime.combine(data_date + dt.timedelta(days=1), dt.time(2), tzinfo=dt.UTC)
    run = dag.test(logical_date=logical, run_conf={"data_date": data_date.isoformat(), **(conf or {})})
    return str(run.state)


def services_env(settings: Settings, port: int, base: dict[str, str] | None = None,
                 deployment: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every component: `base` (default: this process's), then the project's Airflow home
    (airflow_env), LocalExecutor and loopback:`port`, then `deployment` (another executor and metadata
    database: pipeline.tools.celery_stack).

    Only tuning knobs set in `base` win over the project's values (PARALLELISM, API workers, parsing
    processes); where the services live and how they find each other (home, DAG folder, host, port, base
    URL, PATH to this venv's `airflow`) is always the project's.
    """
    source = dict(os.environ if base is None else base)
    env = {**source, **airflow_env(settings)}
    tuning = {
        "AIRFLOW__CORE__PARALLELISM": env.get("AIRFLOW__CORE__PARALLELISM", "4"),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # look for new or changed DAG files every 30 s instead of 5 min: this is a development setup
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt_secret(Catalog.of(settings).airflow_home),
    }
    env.update({key: source.get(key, value) for key, value in tuning.items()})
    env.update({
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), source.get("PATH", "")]),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__API__HOST": HOST,
        "AIRFLOW__API__PORT": str(port),
        # tasks reach the Execution API through this; without it they call :8080 and are killed
        "AIRFLOW__API__BASE_URL": f"http://{HOST}:{port}",
    })
    env.update(deployment or {})
    return env


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _airflow(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["airflow", *args], env=env, capture_output=True, text=True, check=check)


def prepare(settings: Settings, env: dict[str, str]) -> None:
    """Create or upgrade the metadata DB, and the GPU and writer pools (one slot each) if the settings name
    ones that do not exist."""
    Catalog.of(settings).airflow_home.mkdir(parents=True, exist_ok=True)
    try:
        _airflow(env, "db", "migrate")
    except subprocess.CalledProcessError as err:
        tail = err.stderr[-3000:]
        raise AirflowStartError(f"`airflow db migrate` failed in {Catalog.of(settings).airflow_home}:\n{tail}") from err
    pools = {settings.airflow.gpu_pool: "GPU slots for nightly-recs embed/train",
             settings.airflow.writer_pool: "one writer of the nightly-recs published table"}
    for pool, description in pools.items():
        if pool != "default_pool" and _airflow(env, "pools", "get", pool, check=False).returncode != 0:
            _airflow(env, "pools", "set", pool, "1", description)
            log.info("created pool %r with 1 slot (resize it in Admin > Pools)", pool)


@dataclass
class AirflowServices:
    """Running Airflow components sharing one process group."""

    url: str
    home: Path
    log_dir: Path
    env: dict[str, str]  # what the components run with; use it for `airflow` CLI calls against them
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def password_file(self) -> Path:
        return self.home / PASSWORDS_FILE

    @property
    def pgid(self) -> int:
        return next(iter(self.processes.values())).pid

    def exited(self) -> dict[str, int]:
        """Components that have stopped, with their exit codes."""
        return {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.is_file() else ""

    def health(self) -> dict[str, Any] | None:
        """The API server's health report, or None while it does not answer."""
        try:
            with urllib.request.urlopen(self.url + HEALTH_PATH, timeout=5) as resp:
                return json.load(resp)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_healthy(self, timeout_s: float = 180.0) -> dict[str, Any]:
        """Wait until the API answers and the scheduler, dag-processor and triggerer heartbeat."""
        deadline = time.monotonic() + timeout_s
        report: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            if exited := self.exited():
                name = next(iter(exited))
                raise AirflowStartError(f"airflow {name} exited with {exited[name]} while starting; "
                                        f"{self.log_dir / (name + '.log')} ends with:\n{self.log_tail(name)}")
            report = self.health()
            if report and all((report.get(part) or {}).get("status") == "healthy"
                              for part in ("metadatabase", "scheduler", "dag_processor", "triggerer")):
                return report
            time.sleep(1.0)
        raise AirflowStartError(f"Airflow at {self.url} not healthy after {timeout_s:.0f} s: {report}; "
                                f"component logs in {self.log_dir}")

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM the whole process group (components and the task processes they forked), then SIGKILL."""
        if not self.processes:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        for proc in self.processes.values():
            proc.wait()
        log.info("Airflow stopped (process group %d)", self.pgid)


def start(settings: Settings, port: int, env: dict[str, str] | None = None,
          deployment: dict[str, str] | None = None) -> AirflowServices:
    """Migrate the metadata DB, then start the four components in a new process group; returns at once
    (call `wait_healthy`). `deployment`: see services_env."""
    if not port_is_free(port):
        raise AirflowStartError(f"port {port} on {HOST} is in use; set AIRFLOW__API__PORT to another port")
    env = services_env(settings, port, env, deployment)
    prepare(settings, env)
    services = AirflowServices(url=f"http://{HOST}:{port}", home=Catalog.of(settings).airflow_home,
                               log_dir=Catalog.of(settings).airflow_home / "logs" / "services", env=env)
    services.log_dir.mkdir(parents=True, exist_ok=True)
    try:
        for name in COMPONENTS:
            with (services.log_dir / f"{name}.log").open("ab") as out:
                group = services.pgid if services.processes else 0
                services.processes[name] = subprocess.Popen(
                    ["airflow", name], env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, process_group=group,
                )
    except OSError:
        services.stop()
        raise
    log.info("starting Airflow %s (process group %d), logs in %s", ", ".join(COMPONENTS), services.pgid,
             services.log_dir)
    return services


def standalone(settings: Settings) -> int:
    """Run Airflow on 127.0.0.1 until Ctrl-C (or SIGTERM); 1 if a component fails."""
    port = int(os.environ.get("AIRFLOW__API__PORT") or DEFAULT_PORT)
    # the scheduler runs the last closed day as soon as the DAG is parsed: on the demo source, drop its data
    ensure_demo_covers(Catalog.of(settings), closed_day(dt.datetime.now(dt.UTC)))
    try:
        services = start(settings, port)
    except AirflowStartError as err:
        log.error("%s", err)
        return 1

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        services.wait_healthy()
        log.info("Airflow is up: %s  (user admin; password in %s)", services.url, services.password_file)
        log.info("DAGs from %s; Airflow home %s; pipeline state in %s. Ctrl-C stops everything.",
                 REPO_ROOT / "dags", Catalog.of(settings).airflow_home, settings.home)
        while not (exited := services.exited()):
            time.sleep(1.0)
        name = next(iter(exited))
        log.error("airflow %s exited with %s; %s ends with:\n%s", name, exited[name],
                  services.log_dir / f"{name}.log", services.log_tail(name))
        return 1
    except AirflowStartError as err:
        log.error("%s", err)
        return 1
    except KeyboardInterrupt:
        log.info("stopping Airflow")
        return 0
    finally:
        services.stop()
        signal.signal(signal.SIGTERM, previous)
