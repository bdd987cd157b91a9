"""A local service stack on loopback, without containers: the services production runs, as processes.

- PostgreSQL 15 with the databases `warehouse`, `mlflow` and `airflow` (trust authentication, user `postgres`);
- moto's S3-compatible server with the bucket `nightly-recs` (the lake and MLflow's artifacts);
- an MLflow tracking server whose backend store is the `mlflow` database and which proxies artifacts to
  s3://nightly-recs/mlflow, so that clients need only its http URI.

Each service listens on 127.0.0.1 on a free port and runs in a process group of its own. `start_stack(folder)`
records ports and process ids in folder/stack.json, writes the settings a night uses against the stack to
folder/stack.env and the services' logs to folder/logs/. moto keeps objects in memory, so the stack is
ephemeral: `stop_stack` also discards the databases (kept, they would name artifacts that are gone), and the
next start begins empty. `make stack` / `make stack-down` (`nightly-recs stack up|down|env`) call these.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from pipeline.atomic import atomic_open
from pipeline.tools.airflow_local import free_port

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
PG_USER = "postgres"  # the database superuser, and the system user PostgreSQL runs as when we are root
BUCKET = "nightly-recs"
DATABASES = ("warehouse", "mlflow", "airflow")
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
STATE_FILE = "stack.json"
ENV_FILE = "stack.env"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0


class StackError(RuntimeError):
    """A service could not start or did not answer in time; the message names its log file."""


@dataclass(frozen=True)
class Stack:
    """The endpoints of a running stack."""

    folder: Path
    postgres_port: int
    s3_port: int
    mlflow_port: int

    def postgres_uri(self, database: str) -> str:
        return f"postgresql://{PG_USER}@{HOST}:{self.postgres_port}/{database}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{HOST}:{self.s3_port}"

    @property
    def mlflow_uri(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"

    @property
    def airflow_db_uri(self) -> str:
        """Airflow's metadata DB on the stack (SQLAlchemy, psycopg 3 dialect); not among `settings()` yet."""
        return f"postgresql+psycopg://{PG_USER}@{HOST}:{self.postgres_port}/airflow"

    def settings(self) -> dict[str, str]:
        """The environment variables a night uses against this stack."""
        return {
            "NIGHTLY_RECS_WAREHOUSE_URI": self.postgres_uri("warehouse"),
            "NIGHTLY_RECS_MLFLOW_URI": self.mlflow_uri,
            "NIGHTLY_RECS_LAKE_URI": f"s3://{BUCKET}/lake",
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            **AWS,
            "AWS_ALLOW_HTTP": "true",  # delta-rs refuses a plain-http endpoint without it
        }

    def env_text(self) -> str:
        """The settings as shell `export` lines (the content of stack.env)."""
        lines = [f"# nightly-recs local stack in {self.folder}; load with: source {self.folder / ENV_FILE}"]
        lines += [f"export {key}={shlex.quote(value)}" for key, value in self.settings().items()]
        lines += ["# Airflow's metadata DB on the stack, for later use:",
                  f"# export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN={shlex.quote(self.airflow_db_uri)}"]
        return "\n".join(lines) + "\n"

    def s3_client(self) -> Any:
        """A boto3 S3 client for the stack's endpoint (dummy credentials)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.s3_endpoint, region_name=AWS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=AWS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=AWS["AWS_SECRET_ACCESS_KEY"])


def _log_file(folder: Path, service: str) -> Path:
    return folder / "logs" / f"{service}.log"


def _pg_dir(folder: Path) -> Path:
    return folder / "pg"


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def _read_state(folder: Path) -> dict[str, Any] | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except ValueError:
        log.warning("ignoring unreadable %s", path)
        return None


def _processes(state: dict[str, Any] | None) -> dict[str, tuple[int, float]]:
    """The recorded services: name -> (pid, process start time)."""
    recorded = (state or {}).get("processes") or {}
    return {name: (int(pid), float(created)) for name, (pid, created) in recorded.items()}


def _write_state(stack: Stack, processes: dict[str, tuple[int, float]]) -> None:
    state = {**asdict(stack), "folder": str(stack.folder), "processes": processes}
    with atomic_open(stack.folder / STATE_FILE, "w") as out:
        out.write(json.dumps(state, indent=2) + "\n")


def _process(pid: int, created: float) -> psutil.Process | None:
    """The live process `pid` if it is still the one that started at `created` (pids get reused)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is an exited child of ours
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or abs(proc.create_time() - created) > 0.01:
            return None
    except psutil.Error:
        return None
    return proc


def _group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs; zombies do not count (an init may take seconds to reap)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


def _postgres_ok(stack: Stack) -> bool:
    import psycopg

    try:
        with psycopg.connect(stack.postgres_uri("postgres"), connect_timeout=2) as con:
            con.execute("select 1")
    except psycopg.Error:
        return False
    return True


def _as_pg_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: then run its commands as the `postgres` user."""
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        raise StackError(f"{what} failed with {proc.returncode}: {(proc.stdout + proc.stderr)[-2000:]}")


def _prepare_pg_dir(folder: Path) -> None:
    """An empty data folder and log file that the user running PostgreSQL can write."""
    if not (PG_BIN / "initdb").is_file():
        raise StackError(f"PostgreSQL 15 is not installed: {PG_BIN / 'initdb'} is missing "
                         "(Debian: apt-get install postgresql-15)")
    pg_dir, logfile = _pg_dir(folder), _log_file(folder, "postgres")
    shutil.rmtree(pg_dir, ignore_errors=True)
    pg_dir.mkdir(mode=0o700)
    logfile.write_text("")
    if os.geteuid() == 0:
        for path in (pg_dir, logfile):
            shutil.chown(path, PG_USER, PG_USER)
        probe = subprocess.run(_as_pg_user(["test", "-w", str(pg_dir), "-a", "-w", str(logfile)]), check=False)
        if probe.returncode != 0:
            raise StackError(f"the `{PG_USER}` user cannot write {pg_dir}: as root, PostgreSQL runs as "
                             f"`{PG_USER}`, so every folder above {folder} must let others through (chmod o+x)")


def _start_postgres(stack: Stack) -> int:
    """initdb + pg_ctl start in the prepared folder (waits until it accepts connections); the postmaster's pid."""
    pg_dir, logfile = _pg_dir(stack.folder), _log_file(stack.folder, "postgres")
    _run(_as_pg_user([str(PG_BIN / "initdb"), "-D", str(pg_dir), "-A", "trust", "-U", PG_USER, "-E", "UTF8"]),
         f"initdb in {pg_dir}")
    options = f"-p {stack.postgres_port} -k {shlex.quote(str(pg_dir))} -c listen_addresses={HOST}"
    try:
        _run(_as_pg_user([str(PG_BIN / "pg_ctl"), "-D", str(pg_dir), "-l", str(logfile), "-o", options, "-w",
                          "-t", str(int(START_TIMEOUT_S)), "start"]), "pg_ctl start")
    except StackError as err:
        raise StackError(f"{err}\n{logfile} ends with:\n{_tail(logfile)}") from err
    return int((pg_dir / "postmaster.pid").read_text().split()[0])


def _create_databases(stack: Stack) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(stack.postgres_uri("postgres"), autocommit=True) as con:
        for name in DATABASES:
            con.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def _service_env(stack: Stack) -> dict[str, str]:
    return {
        **os.environ,
        **AWS,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "AWS_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_S3_ENDPOINT_URL": stack.s3_endpoint,
        "MLFLOW_ENABLE_TELEMETRY": "false",
        # the GenAI job runner (huey workers) is not used here; on 2 cores it only takes memory and CPU
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }


def _spawn(stack: Stack, service: str, cmd: list[str]) -> subprocess.Popen[bytes]:
    """Start a service in a new process group (its pid is the group id), output to its log file."""
    with _log_file(stack.folder, service).open("wb") as out:
        return subprocess.Popen(cmd, env=_service_env(stack), stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _mlflow_command(stack: Stack) -> list[str]:
    backend = f"postgresql+psycopg://{PG_USER}@{HOST}:{stack.postgres_port}/mlflow"
    return [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend, "--serve-artifacts",
            "--artifacts-destination", f"s3://{BUCKET}/mlflow", "--host", HOST, "--port", str(stack.mlflow_port),
            "--workers", "1"]


def _wait_until(service: str, ready: Callable[[], bool], proc: subprocess.Popen[bytes], folder: Path,
                timeout_s: float) -> None:
    logfile = _log_file(folder, service)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{service} exited with {proc.returncode} while starting; {logfile} ends with:\n"
                             f"{_tail(logfile)}")
        if ready():
            return
        time.sleep(0.3)
    raise StackError(f"{service} did not answer within {timeout_s:.0f} s; see {logfile}")


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        if (port := free_port()) not in ports:
            ports.append(port)
    return ports


def running_stack(folder: Path) -> Stack | None:
    """The stack recorded in folder/stack.json if all its processes live and every service answers."""
    folder = folder.resolve()
    state = _read_state(folder)
    processes = _processes(state)
    if state is None or set(processes) != {"postgres", "moto", "mlflow"}:
        return None
    stack = Stack(folder, int(state["postgres_port"]), int(state["s3_port"]), int(state["mlflow_port"]))
    if not all(_process(pid, created) for pid, created in processes.values()):
        return None
    if _postgres_ok(stack) and _http_ok(stack.s3_endpoint + "/") and _http_ok(stack.mlflow_uri + "/health"):
        return stack
    return None


def start_stack(folder: Path, timeout_s: float = START_TIMEOUT_S) -> Stack:
    """Start PostgreSQL, moto and MLflow on loopback (or return the stack already running in the folder)."""
    folder = folder.resolve()
    if (running := running_stack(folder)) is not None:
        log.info("the stack in %s is already running", folder)
        return running
    stop_stack(folder)  # whatever a dead or half-started stack left behind
    _log_file(folder, "any").parent.mkdir(parents=True, exist_ok=True)
    stack = Stack(folder, *_free_ports(3))
    processes: dict[str, tuple[int, float]] = {}

    def record(service: str, pid: int) -> None:
        processes[service] = (pid, psutil.Process(pid).create_time())
        _write_state(stack, processes)

    try:
        _prepare_pg_dir(folder)  # first: it fails fast when PostgreSQL is missing or cannot reach the folder
        # moto starts while PostgreSQL initialises; MLflow needs its database first
        moto = _spawn(stack, "moto", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(stack.s3_port)])
        record("moto", moto.pid)
        record("postgres", _start_postgres(stack))
        _create_databases(stack)
        mlflow = _spawn(stack, "mlflow", _mlflow_command(stack))
        record("mlflow", mlflow.pid)
        _wait_until("moto", lambda: _http_ok(stack.s3_endpoint + "/"), moto, folder, timeout_s)
        stack.s3_client().create_bucket(Bucket=BUCKET)
        _wait_until("mlflow", lambda: _http_ok(stack.mlflow_uri + "/health"), mlflow, folder, timeout_s)
    except BaseException:
        stop_stack(folder)
        raise
    with atomic_open(folder / ENV_FILE, "w") as out:
        out.write(stack.env_text())
    log.info("stack up in %s: PostgreSQL :%d, S3 (moto) :%d, MLflow :%d", folder, stack.postgres_port,
             stack.s3_port, stack.mlflow_port)
    return stack


def stop_group(service: str, pgid: int, created: float) -> None:
    """SIGTERM the service's process group, then SIGKILL what is left after STOP_TIMEOUT_S."""
    if _process(pgid, created) is None and psutil.pid_exists(pgid):
        log.warning("pid %d is no longer the stack's %s; leaving it alone", pgid, service)
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.1)
        if not _group_alive(pgid):
            return
        log.warning("%s (process group %d) outlived SIGTERM; killing it", service, pgid)


def _stop_postgres(folder: Path, pid: int, created: float) -> None:
    """pg_ctl's fast shutdown (PostgreSQL's children each run in a session of their own, so a process group
    signal would miss them); SIGQUIT (immediate shutdown), then SIGKILL, if the postmaster outlives it."""
    if _process(pid, created) is None:
        return  # not running (a stale postmaster.pid may name a reused pid: no pg_ctl stop then)
    cmd = [str(PG_BIN / "pg_ctl"), "-D", str(_pg_dir(folder)), "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT_S)),
           "stop"]
    try:
        _run(_as_pg_user(cmd), "pg_ctl stop")
    except StackError as err:
        log.warning("%s", err)
    for sig in (signal.SIGQUIT, signal.SIGKILL):
        if _process(pid, created) is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline and _process(pid, created) is not None:
            time.sleep(0.1)


def stop_stack(folder: Path) -> None:
    """Stop every service of the stack in the folder and discard its state and data (the logs stay)."""
    folder = folder.resolve()
    processes = _processes(_read_state(folder))
    for service in ("mlflow", "moto"):
        if service in processes:
            stop_group(service, *processes[service])
    if "postgres" in processes:
        _stop_postgres(folder, *processes["postgres"])
    for name in (STATE_FILE, ENV_FILE):
        (folder / name).unlink(missing_ok=True)
    shutil.rmtree(_pg_dir(folder), ignore_errors=True)
    if processes:
        log.info("stack in %s stopped", folder)
