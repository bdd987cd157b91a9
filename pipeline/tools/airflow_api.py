"""A minimal client of Airflow's REST API v2 (token login, trigger, poll runs and task instances), for the
tools and tests that drive real Airflow services (pipeline.tools.celery_stack, bench/bench_celery.py)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ApiError(RuntimeError):
    """An unexpected answer from the API, or a wait that ran out."""


def _expect(status: int, wanted: int, body: Any) -> None:
    if status != wanted:
        raise ApiError(f"Airflow API answered {status} (expected {wanted}): {body}")


@dataclass
class Api:
    """A minimal REST API v2 client with the JWT from POST /auth/token."""

    url: str
    token: str = ""

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One API call; a transient 5xx (SQLite busy while the scheduler writes) is retried a few times."""
        for _ in range(5):
            status, payload = self._call_once(method, path, body)
            if status < 500:
                break
            time.sleep(1.0)
        return status, payload

    def _call_once(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            payload = err.read()
            return err.code, json.loads(payload) if payload else {}

    def login(self, password_file: Path) -> None:
        password = json.loads(password_file.read_text())["admin"]
        status, body = self.call("POST", "/auth/token", {"username": "admin", "password": password})
        _expect(status, 201, body)
        self.token = body["access_token"]

    def wait_for(self, path: str, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status, body = self.call("GET", path)
            if status == 200:
                return body
            time.sleep(1.0)
        raise ApiError(f"GET {path} did not answer 200 within {timeout_s:.0f} s")

    def wait_run(self, dag_id: str, run_id: str, timeout_s: float, services: Any) -> dict:
        """Poll a DAG run until it finishes; fail early if an Airflow component died."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if services.exited():
                raise ApiError(f"Airflow components exited: {services.exited()}")
            status, run = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            _expect(status, 200, run)
            if run["state"] in ("success", "failed"):
                return run
            time.sleep(2.0)
        raise ApiError(f"{dag_id} run {run_id} not finished within {timeout_s:.0f} s: {run['state']}")

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        status, body = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        _expect(status, 200, body)
        return {ti["task_id"]: ti for ti in body["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {task_id: ti["state"] for task_id, ti in self.task_instances(dag_id, run_id).items()}

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        """Trigger a run without a logical date (as the UI's trigger form does); returns its run id."""
        status, run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        _expect(status, 200, run)
        return str(run["dag_run_id"])

    def runs(self, dag_id: str) -> list[dict]:
        status, body = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?order_by=run_after")
        _expect(status, 200, body)
        return body["dag_runs"]
