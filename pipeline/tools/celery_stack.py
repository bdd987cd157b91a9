"""Airflow as a multi-worker deployment on the local stack: CeleryExecutor, Redis, PostgreSQL, no shared disk.

On top of the service stack (pipeline.tools.stack: PostgreSQL, the S3 endpoint, the MLflow server) this starts

- Redis (Debian's `redis-server`, installed with apt-get when missing and allowed) as Celery's broker and
  result backend;
- the Airflow control plane (api-server, scheduler, dag-processor, triggerer: the same code as `make airflow`)
  with the `airflow` database on PostgreSQL and the CeleryExecutor;
- two or more Celery workers, each with an Airflow home, a pipeline home and a scratch folder of its own (they
  share no disk: every dataset goes to the stack's URIs, XComs carry URIs and small values). The last worker
  serves only the GPU queue (setting `gpu_queue`), as a GPU node would, so `embed` and `train` run there and
  everything else on the others; each reports its name as the task instances' hostname
  (pipeline.dag_support.worker_hostname).

The landing folder is the one thing every worker reads from the same path (the source's drops; on a real
deployment, a mounted bucket or share). Logs of each worker stay in its own home (a real deployment ships them to
remote logging). `start_celery_airflow` returns a handle whose `stop()` stops workers, control plane and Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from pipeline.atomic import atomic_open
from pipeline.config import load_settings
from pipeline.dag_support import WORKER_NAME_ENV
from pipeline.tools import airflow_local
from pipeline.tools.airflow_local import HOST, AirflowServices, free_port
from pipeline.tools.stack import Stack, StackError, stop_group

log = logging.getLogger(__name__)

GPU_QUEUE = "gpu"
STATE_FILE = "airflow.json"  # the process groups of a deployment started for `make stack`, for `make stack-down`
REDIS_START_S = 30.0


def redis_server() -> str:
    """The redis-server binary; installed from Debian's packages when missing and this process is root."""
    found = shutil.which("redis-server")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log.info("installing redis-server from Debian's packages")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "redis-server"]):
            subprocess.run(cmd, check=True, capture_output=True, env=env)
        found = shutil.which("redis-server")
    if not found:
        raise StackError("redis-server is not installed: `apt-get install -y redis-server` (as root) provides it")
    return found


@dataclass
class CeleryAirflow:
    """A running multi-worker Airflow: its API URL, control plane, workers and broker."""

    folder: Path
    control: AirflowServices
    redis: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.control.url

    def worker_folder(self, name: str) -> Path:
        return self.folder / name

    def exited(self) -> dict[str, int]:
        """Components and workers that have stopped, with their exit codes."""
        stopped = {name: p.returncode for name, p in self.workers.items() if p.poll() is not None}
        return {**self.control.exited(), **stopped}

    def stop(self, grace_s: float = 30.0) -> None:
        """Stop the workers (warm shutdown, then kill), the control plane, then Redis."""
        for proc in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.workers.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.control.stop(grace_s)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.redis.pid, signal.SIGKILL)
        self.redis.wait()
        log.info("Celery Airflow stopped")


def _start_redis(folder: Path, port: int) -> subprocess.Popen[bytes]:
    data = folder / "redis"
    data.mkdir(parents=True, exist_ok=True)
    out = (folder / "redis.log").open("ab")
    proc = subprocess.Popen([redis_server(), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly",
                             "no", "--dir", str(data)], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, process_group=0)
    deadline = time.monotonic() + REDIS_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"redis-server exited with {proc.returncode}; see {folder / 'redis.log'}")
        if not airflow_local.port_is_free(port):
            return proc
        time.sleep(0.2)
    raise StackError(f"redis-server did not listen on {HOST}:{port} within {REDIS_START_S:.0f} s")


def deployment_env(stack: Stack, redis_port: int) -> dict[str, str]:
    """What turns the local Airflow into the multi-worker one: CeleryExecutor, PostgreSQL metadata, Redis."""
    redis = f"redis://{HOST}:{redis_port}"
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": stack.airflow_db_uri,
        # Airflow's async engine would default to asyncpg; psycopg 3 has an async driver of its own
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": stack.airflow_db_uri.replace("+psycopg:", "+psycopg_async:"),
        "AIRFLOW__CELERY__BROKER_URL": f"{redis}/0",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"{redis}/1",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipeline.dag_support.worker_hostname",
    }


def start_celery_airflow(stack: Stack, folder: Path, pipeline_env: dict[str, str], workers: int = 2,
                         timeout_s: float = 240.0) -> CeleryAirflow:
    """Start Redis, the control plane and `workers` Celery workers under `folder`; wait until healthy.

    `pipeline_env` holds the pipeline's settings for every component (NIGHTLY_RECS_*: the stack's URIs, the
    landing folder, the model name; AWS_*), on top of this process's environment. The GPU queue is `gpu`."""
    if workers < 2:
        raise ValueError("a multi-worker deployment needs at least two workers")
    folder.mkdir(parents=True, exist_ok=True)
    redis = _start_redis(folder, free_port())
    deployment = deployment_env(stack, int(redis.args[2]))
    base = {**os.environ, **stack.settings(), **pipeline_env, "NIGHTLY_RECS_GPU_QUEUE": GPU_QUEUE,
            "NIGHTLY_RECS_HOME": str(folder / "control")}
    settings = load_settings(base)
    try:
        control = airflow_local.start(settings, free_port(), base, deployment)
    except Exception:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(redis.pid, signal.SIGKILL)
        raise
    airflow = CeleryAirflow(folder, control, redis)
    try:
        control.wait_healthy(timeout_s)  # workers call the API server's Execution API from their first task
        for index in range(1, workers + 1):
            name = f"worker-{index}"
            airflow.workers[name] = _start_worker(airflow, name, "default" if index < workers else GPU_QUEUE)
    except Exception:
        airflow.stop()
        raise
    log.info("Celery Airflow up at %s with %s", airflow.url, ", ".join(airflow.workers))
    _record(airflow)
    return airflow


def _record(airflow: CeleryAirflow) -> None:
    """Write the deployment's process groups (leader pid and start time) to folder/airflow.json."""
    groups = {"redis": airflow.redis.pid, "airflow": airflow.control.pgid,
              **{name: p.pid for name, p in airflow.workers.items()}}
    state = {"url": airflow.url, "password_file": str(airflow.control.password_file),
             "groups": {name: (pid, psutil.Process(pid).create_time()) for name, pid in groups.items()}}
    with atomic_open(airflow.folder / STATE_FILE, "w") as out:
        out.write(json.dumps(state, indent=2) + "\n")


def stop_recorded(folder: Path) -> None:
    """Stop a deployment recorded in folder/airflow.json by an earlier process (`make stack-down`)."""
    path = folder / STATE_FILE
    if not path.is_file():
        return
    groups = json.loads(path.read_text()).get("groups") or {}
    for name in sorted(groups, key=lambda n: n == "redis"):  # the broker last
        stop_group(name, int(groups[name][0]), float(groups[name][1]))
    path.unlink()
    log.info("Celery Airflow in %s stopped", folder)


def _start_worker(airflow: CeleryAirflow, name: str, queues: str) -> subprocess.Popen[bytes]:
    """One Celery worker with its own Airflow home, pipeline home, scratch folder and log server port."""
    own = airflow.worker_folder(name)
    for sub in ("airflow", "home", "scratch"):
        (own / sub).mkdir(parents=True, exist_ok=True)
    env = {**airflow.control.env, "AIRFLOW_HOME": str(own / "airflow"), "NIGHTLY_RECS_HOME": str(own / "home"),
           "NIGHTLY_RECS_SCRATCH_DIR": str(own / "scratch"), WORKER_NAME_ENV: name,
           "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}
    out = (own / "worker.log").open("ab")
    return subprocess.Popen(["airflow", "celery", "worker", "--queues", queues, "--concurrency", "1",
                             "--celery-hostname", f"{name}@%h", "--without-mingle", "--without-gossip"],
                            env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            process_group=0)
