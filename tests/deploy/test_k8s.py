"""deploy/k8s/: valid Kubernetes objects, real commands and settings, scaled as consumer groups."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped,unused-ignore]
import pytest
import yaml

from loraswarm.cli.serve import available
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.models import cached_path
from loraswarm.shared.settings import Settings
from tests.deploy import manifests
from tests.deploy.manifests import (
    K8S,
    TGI_ENTRYPOINT,
    containers,
    k8s_documents,
    option,
    parse_command,
    pod_specs,
    vllm_reads_true,
)

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


# ---------------------------------------------------------------- vLLM, the specialists' engine

# A pod name, as the downward API gives it to the loader (fieldRef: metadata.name).
POD_NAME = "vllm-6f9c7d8b5-x2k4q"


def _workload(kind: str, name: str) -> dict[str, Any]:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def _container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, f"{len(found)} containers named {name}"
    return found[0]


def _vllm_pod() -> dict[str, Any]:
    spec: dict[str, Any] = _workload("Deployment", "vllm")["spec"]["template"]["spec"]
    return spec


def _vllm_argv(container: dict[str, Any]) -> list[str]:
    return [str(p) for p in [*container["command"], *container["args"]]]


def _claim_mounts(spec: dict[str, Any], container: dict[str, Any], claim: str) -> list[dict[str, Any]]:
    """The container's mounts of the PersistentVolumeClaim `claim`."""
    volumes = {v["name"]: (v.get("persistentVolumeClaim") or {}).get("claimName") for v in spec["volumes"]}
    return [m for m in container.get("volumeMounts", []) if volumes.get(m["name"]) == claim]


def _loader_settings(settings_from: Callable[[dict[str, str]], Settings]) -> Settings:
    """The vLLM loader's settings in its pod: the image's ENV, the ConfigMap, then its own env."""
    loader = _container(_vllm_pod(), "vllm-loader")
    env = {k: v for k, v in manifests.dockerfile_env().items() if k.startswith("LORASWARM_")}
    env.update({str(k): str(v) for k, v in _configmap("loraswarm-env")["data"].items()})
    for item in loader.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = POD_NAME
    return settings_from(env)


def _port(container: dict[str, Any], port: int | str) -> int:
    """A container port by number or name."""
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def test_vllm_loads_adapters_at_run_time(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    spec = _vllm_pod()
    vllm = _container(spec, "vllm")
    argv = _vllm_argv(vllm)
    assert argv[:2] == ["vllm", "serve"]
    # Run-time loading (POST /v1/load_lora_adapter, what the loader calls) needs both.
    assert "--enable-lora" in argv
    env = {e["name"]: e for e in vllm["env"]}
    assert vllm_reads_true(env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"].get("value"))
    assert int(option(argv, "--max-cpu-loras")) >= int(option(argv, "--max-loras"))
    settings = _loader_settings(settings_from)
    assert int(option(argv, "--max-lora-rank")) == settings.orchestration.vllm_max_lora_rank
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    # The folder the models-pull Job writes, waited for by the init container.
    (models,) = _claim_mounts(spec, vllm, "loraswarm-models")
    assert argv[2] == f"{models['mountPath']}/{cached_path(settings).relative_to(settings.model_cache)}"
    assert [c["name"] for c in spec["initContainers"]] == ["wait-for-base-model"]
    port = int(option(argv, "--port"))
    for probe in ("readinessProbe", "startupProbe"):
        check = vllm[probe]["httpGet"]
        assert check["path"] == "/health", probe
        assert _port(vllm, check["port"]) == port, probe


def test_vllm_and_its_loader_see_the_adapter_store_at_the_same_path(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    """The loader hands vLLM the folders by its own absolute paths (`lora_path`): vLLM must find
    them there, so both mount the store where the loader's settings put it, and the trainer
    writes the same claim there."""
    spec = _vllm_pod()
    root = str(AdapterStore.under(_loader_settings(settings_from).data_dir).root)
    for name in ("vllm", "vllm-loader"):
        mounts = _claim_mounts(spec, _container(spec, name), "loraswarm-adapters")
        assert [m["mountPath"] for m in mounts] == [root], f"{name}: {mounts}; the loader reads {root}"
        assert mounts[0].get("readOnly") is True, f"{name}: only the trainer writes the adapter store"
    trainer = _workload("Deployment", "trainer")["spec"]["template"]["spec"]
    (written,) = _claim_mounts(trainer, _container(trainer, "trainer"), "loraswarm-adapters")
    assert written["mountPath"] == root and not written.get("readOnly")


def test_each_vllm_pod_has_its_own_loader(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    """Run-time adapters live in one vLLM process: the loader beside it calls that one, in a
    consumer group of its own, so every replica hears every adapter.published."""
    spec = _vllm_pod()
    loader = _container(spec, "vllm-loader")
    assert loader in spec["containers"]
    path, params = parse_command([str(p) for p in loader["command"]])
    assert (path, params["service"], params["broker"]) == (["serve"], "vllm_loader", "kafka")
    env = {e["name"]: e for e in loader["env"]}
    group = env["LORASWARM_ORCHESTRATION__VLLM_LOADER_GROUP"]
    assert group["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    o = _loader_settings(settings_from).orchestration
    assert o.vllm_loader_group == POD_NAME
    assert o.specialist_engine == "vllm", "the loader idles unless the engine is vllm"
    url = urlsplit(o.vllm_url)
    port = int(option(_vllm_argv(_container(spec, "vllm")), "--port"))
    assert (url.hostname, url.port, url.path.rstrip("/")) == ("127.0.0.1", port, "/v1")


def test_the_specialists_answer_with_vllm_by_default(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    o = settings_from({str(k): str(v) for k, v in _configmap("loraswarm-env")["data"].items()}).orchestration
    assert o.specialist_engine == "vllm"
    url = urlsplit(o.vllm_url)
    assert url.path.rstrip("/") == "/v1"
    # The URL's host is a Service in front of the vllm pods, on the port vLLM listens on.
    service = _workload("Service", str(url.hostname))
    deployment = _workload("Deployment", "vllm")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 80)]
    vllm = _container(deployment["spec"]["template"]["spec"], "vllm")
    assert _port(vllm, port["targetPort"]) == int(option(_vllm_argv(vllm), "--port"))
    # TGI is the alternative: deployed, holding no GPU until it is scaled up.
    assert _workload("Deployment", "tgi")["spec"]["replicas"] == 0
    assert deployment["spec"]["replicas"] >= 1


def test_vllm_and_its_callers_share_one_key() -> None:
    """vLLM's key (VLLM_API_KEY: its --api-key) is the one the specialists and the loader send,
    from the Secret that config.yaml says how to create."""
    key = "LORASWARM_ORCHESTRATION__VLLM_API_KEY"
    assert key in manifests.loraswarm_setting_names()
    vllm = _container(_vllm_pod(), "vllm")
    (env,) = [e for e in vllm["env"] if e["name"] == "VLLM_API_KEY"]
    assert env["valueFrom"]["secretKeyRef"]["name"] == "loraswarm-secrets"
    assert env["valueFrom"]["secretKeyRef"]["key"] == key
    specialist = _workload("Deployment", "specialist")["spec"]["template"]["spec"]
    for where, caller in (
        ("specialist", _container(specialist, "specialist")),
        ("vllm-loader", _container(_vllm_pod(), "vllm-loader")),
    ):
        secrets = [s["secretRef"]["name"] for s in caller.get("envFrom", []) if "secretRef" in s]
        assert "loraswarm-secrets" in secrets, where
    assert f"--from-literal={key}=" in (K8S / "config.yaml").read_text()
