"""deploy/k8s/: valid Kubernetes objects, real commands and settings, scaled as consumer groups."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from loraswarm.cli.serve import available
from loraswarm.shared.settings import Settings
from tests.deploy import manifests
from tests.deploy.manifests import K8S, TGI_ENTRYPOINT, containers, k8s_documents, parse_command, pod_specs

# The Kubernetes release whose schemas the manifests are checked against (kubernetes-validate
# ships them; nothing is downloaded).
KUBERNETES = "1.33"


def _configmap(name: str) -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no ConfigMap {name} in deploy/k8s")


def _loraswarm_containers() -> list[tuple[str, dict[str, Any]]]:
    return [
        (where, c)
        for where, spec in pod_specs()
        for c in containers(spec)
        if str(c["image"]).split(":")[0] == "loraswarm"
    ]


def test_every_manifest_is_a_valid_kubernetes_object() -> None:
    checked = 0
    for path, doc in k8s_documents():
        if doc.get("kind") == "Kustomization":
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            )
        checked += 1
    assert checked >= 10


def test_the_validation_can_fail() -> None:
    _, deployment = next((p, d) for p, d in k8s_documents() if d["kind"] == "Deployment")
    deployment = yaml.safe_load(yaml.safe_dump(deployment))
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Sometimes"
    deployment["spec"]["replicaz"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, (
        f"listed but missing: {listed - on_disk}; on disk but not listed: {on_disk - listed}"
    )


def test_every_container_command_is_real() -> None:
    found = _loraswarm_containers()
    assert found
    for where, container in found:
        command = [str(p) for p in container.get("command", [])]
        if command[:1] != ["loraswarm"]:
            continue  # a shell wait loop (checked below)
        try:
            path, params = parse_command(command)
        except Exception as exc:  # the CLI's own usage errors
            pytest.fail(f"{where}: `{' '.join(command)}` is not a loraswarm command: {exc}")
        if path == ["serve"]:
            assert params["broker"] == "kafka", where


def test_every_service_package_is_a_deployment_and_every_deployment_a_service() -> None:
    served: dict[str, str] = {}
    for where, container in _loraswarm_containers():
        command = [str(p) for p in container.get("command", [])]
        if command[:2] == ["loraswarm", "serve"]:
            served[parse_command(command)[1]["service"]] = where
    missing_packages = sorted(set(served) - set(available()))
    assert not missing_packages, (
        f"deploy/k8s runs {missing_packages}, but services/ has no such package (present: {available()})"
    )
    not_deployed = sorted(set(available()) - set(served))
    assert not not_deployed, f"services/ has {not_deployed}, but deploy/k8s runs none of them"


def test_every_loraswarm_variable_is_a_setting(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    names = manifests.loraswarm_setting_names()
    config = {str(k): str(v) for k, v in _configmap("loraswarm-env")["data"].items()}
    unknown = sorted(k for k in config if k.upper() not in names)
    assert not unknown, f"the ConfigMap loraswarm-env sets {unknown}, which are not settings"
    for where, container in _loraswarm_containers():
        env = {e["name"]: str(e.get("value", "")) for e in container.get("env", [])}
        unknown = sorted(k for k in env if k.upper().startswith("LORASWARM_") and k.upper() not in names)
        assert not unknown, f"{where} sets {unknown}, which are not settings"
        try:
            settings_from({**config, **{k: v for k, v in env.items() if k.startswith("LORASWARM_")}})
        except ValueError as exc:
            pytest.fail(f"{where}: its LORASWARM_* values are not valid settings: {exc}")


def test_consumer_groups_scale_no_further_than_the_partitions(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    settings = settings_from({str(k): str(v) for k, v in _configmap("loraswarm-env")["data"].items()})
    autoscalers = [d for _, d in k8s_documents() if d["kind"] == "HorizontalPodAutoscaler"]
    assert {a["spec"]["scaleTargetRef"]["name"] for a in autoscalers} >= {
        "planner",
        "specialist",
        "retriever",
    }
    for autoscaler in autoscalers:
        spec = autoscaler["spec"]
        assert spec["minReplicas"] <= spec["maxReplicas"] <= settings.kafka.partitions, autoscaler["metadata"]


def test_tgi_runs_the_same_entrypoint_as_compose() -> None:
    script = _configmap("tgi-entrypoint")["data"]["tgi-entrypoint.sh"]
    assert script == TGI_ENTRYPOINT.read_text(), (
        "deploy/k8s/tgi.yaml's ConfigMap must hold deploy/docker/tgi-entrypoint.sh unchanged"
    )
    tgi = next(spec for where, spec in pod_specs() if where.endswith("Deployment/tgi"))
    container = tgi["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"name": "ADAPTER_STORE", "value": "/adapters"} in container["env"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["adapters"] == "/adapters"


def test_the_base_model_wait_loop_waits_until_the_model_is_there(tmp_path: Path) -> None:
    """The init containers' check, run for real: it fails on an empty cache and passes on a pulled one."""
    waits = [
        c["command"]
        for _, spec in pod_specs()
        for c in spec.get("initContainers", [])
        if c["name"].startswith("wait")
    ]
    assert waits
    loop = str(waits[0][-1])
    check = loop[loop.index("python -c '") + len("python -c '") : loop.index("';")]
    empty = subprocess.run(
        [sys.executable, "-c", check],
        env={"LORASWARM_MODEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert empty.returncode != 0 and "loraswarm models pull" in empty.stderr
    model = tmp_path / Settings().base_model.replace("/", "--")
    model.mkdir()
    (model / "config.json").write_text("{}")
    pulled = subprocess.run(
        [sys.executable, "-c", check],
        env={"LORASWARM_MODEL_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert pulled.returncode == 0, pulled.stderr
