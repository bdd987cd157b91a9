"""The Kubernetes path, checked as far as it can be without a cluster: the Helm values parse and set only valid
settings, and the GPU tasks' pod_override builds with the Kubernetes provider's models, reaches the embed and
train tasks only, and survives Airflow's DAG serialisation (what the scheduler stores and the executor reads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_settings

REPO = Path(__file__).resolve().parent.parent
VALUES = REPO / "deploy" / "k8s" / "values.yaml"


def test_helm_values_parse_and_every_pipeline_setting_in_them_is_valid(tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    env = {e["name"]: e["value"] for e in values["env"]}
    ours = {k: v.replace("<bucket>", "bucket").replace("<registry>", "registry").replace("<version>", "1")
            for k, v in env.items() if k.startswith("NIGHTLY_RECS_")}
    assert {"NIGHTLY_RECS_LAKE_URI", "NIGHTLY_RECS_MLFLOW_URI", "NIGHTLY_RECS_GPU_IMAGE"} <= set(ours)
    settings = load_settings(env=ours, home=tmp_path)  # an unknown name or a bad value raises ConfigError
    assert settings.paths.lake_uri == "s3://bucket/nightly-recs"
    assert settings.airflow.gpu_node_selector == {"nvidia.com/gpu.present": "true"}
    assert values["config"]["logging"]["remote_logging"] == "True", "task pods keep no logs: ship them"


def test_gpu_pod_override_builds_with_the_kubernetes_models() -> None:
    from kubernetes.client import ApiClient

    from pipeline.dag_support import gpu_executor_config

    assert gpu_executor_config(load_settings(env={})) == {}, "no image: no override"
    settings = load_settings(env={"NIGHTLY_RECS_GPU_IMAGE": "registry/nightly-recs:1-cuda",
                                  "NIGHTLY_RECS_GPU_COUNT": "2",
                                  "NIGHTLY_RECS_GPU_NODE_SELECTOR": json.dumps({"gpu": "h100"})})
    pod = ApiClient().sanitize_for_serialization(gpu_executor_config(settings)["executor_config"]["pod_override"])
    [container] = pod["spec"]["containers"]
    assert container["name"] == "base", "the KubernetesExecutor merges the override into its `base` container"
    assert container["image"] == "registry/nightly-recs:1-cuda"
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "2"}, "requests": {"nvidia.com/gpu": "2"}}
    assert pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_only_the_gpu_tasks_get_the_pod_override_and_the_dag_still_serialises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization

    monkeypatch.setenv("NIGHTLY_RECS_GPU_IMAGE", "registry/nightly-recs:1-cuda")
    dag = DagBag(dag_folder=str(REPO / "dags" / "nightly_recommendations.py")).dags["nightly_recommendations"]
    overridden = {t.task_id for t in dag.tasks if (t.executor_config or {}).get("pod_override") is not None}
    assert overridden == {"embed", "train"}
    serialised = DagSerialization.to_dict(dag)
    again = DagSerialization.from_dict(serialised)
    pod = again.get_task("train").executor_config["pod_override"]
    assert pod.spec.containers[0].resources.limits == {"nvidia.com/gpu": "1"}
