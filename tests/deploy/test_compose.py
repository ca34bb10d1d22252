"""docker-compose.yml: valid for Compose, every loraswarm command real, every LORASWARM_* a setting."""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest

from loraswarm.cli.serve import available
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.models import cached_path
from loraswarm.shared.settings import Settings
from tests.deploy import manifests
from tests.deploy.manifests import ROOT, compose, environment_of, interpolate, parse_command

IMAGE = "loraswarm:latest"


def _compose_spec() -> dict[str, Any]:
    # The compose-spec JSON Schema as check-jsonschema vendors it (no network here).
    text = (
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    schema: dict[str, Any] = json.loads(text)
    return schema


def _loraswarm_services(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if svc.get("image") == IMAGE}


def test_compose_follows_the_compose_specification() -> None:
    schema = _compose_spec()
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_schema_check_can_fail() -> None:
    schema = _compose_spec()
    broken = compose()
    broken["services"]["planner"]["restart"] = ["always"]
    broken["services"]["planner"]["comand"] = ["loraswarm"]
    validator = jsonschema.validators.validator_for(schema)(schema)
    assert len(list(validator.iter_errors(broken))) >= 2


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d}/${UNSET:-d}/${EMPTY:-d}/${EMPTY-d}", env) == "x/d/d/"
    assert interpolate("$$HOME ${SET:+alt} $SET", env) == "$HOME alt x"
    with pytest.raises(ValueError, match="UNSET is required"):
        interpolate("${UNSET:?set it}", env)


def test_the_production_stack_is_all_there() -> None:
    services = compose()["services"]
    images = {name: str(svc.get("image", "")) for name, svc in services.items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert "weaviate" in images["weaviate"]
    assert "text-generation-inference" in images["tgi"]
    assert "opentelemetry-collector" in images["otel-collector"]
    assert "jaeger" in images["jaeger"]
    assert "prometheus" in images["prometheus"]
    assert "grafana" in images["grafana"]
    gpu = services["tgi"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]


def _container_env(service: dict[str, Any]) -> dict[str, str]:
    """The LORASWARM_* a loraswarm container gets: the image's ENV, then compose's environment."""
    env = {k: v for k, v in manifests.dockerfile_env().items() if k.startswith("LORASWARM_")}
    env.update(
        {k: v for k, v in environment_of(service).items() if k.startswith("LORASWARM_") and v is not None}
    )
    return env


def test_tgi_reads_the_adapter_store_that_the_trainer_writes(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    services = compose()["services"]
    tgi_mounts = dict(str(m).split(":")[:2] for m in services["tgi"]["volumes"])
    trainer_mounts = dict(str(m).split(":")[:2] for m in services["trainer"]["volumes"])
    assert "LORA_ADAPTERS" in services["tgi"]["environment"]
    assert tgi_mounts["adapters"] == services["tgi"]["environment"]["ADAPTER_STORE"]
    assert any(str(part).endswith("tgi-entrypoint.sh") for part in services["tgi"]["entrypoint"])
    # The trainer writes the adapter store at <data_dir>/adapters (shared/adapter_store.py), and
    # the model server reads it there.
    for writer in ("trainer", "model-server"):
        settings = settings_from(_container_env(services[writer]))
        mounts = dict(str(m).split(":")[:2] for m in services[writer]["volumes"])
        assert mounts["adapters"] == str(AdapterStore.under(settings.data_dir).root), writer
    assert trainer_mounts["models"] == str(settings_from(_container_env(services["trainer"])).model_cache)
    # TGI loads the folder that models-pull wrote: <model_cache>/<base model>.
    pull = settings_from(_container_env(services["models-pull"]))
    model_id = services["tgi"]["command"][services["tgi"]["command"].index("--model-id") + 1]
    assert model_id == f"{tgi_mounts['models']}/{cached_path(pull).relative_to(pull.model_cache)}"


def test_every_service_runs_from_the_one_image_with_a_real_command() -> None:
    services = _loraswarm_services(compose())
    assert services, f"no service uses the image {IMAGE}"
    for name, service in services.items():
        build = service.get("build") or {}
        assert build.get("dockerfile") == "deploy/docker/Dockerfile", name
        command = [str(part) for part in service["command"]]
        try:
            parse_command(command)
        except Exception as exc:  # the CLI's own usage errors
            pytest.fail(f"compose service {name}: `{' '.join(command)}` is not a loraswarm command: {exc}")


def test_every_served_service_exists_and_runs_on_kafka() -> None:
    served = {}
    for name, service in _loraswarm_services(compose()).items():
        path, params = parse_command([str(p) for p in service["command"]])
        if path == ["serve"]:
            served[params["service"]] = name
            assert params["broker"] == "kafka", f"compose service {name} must run with --broker kafka"
    missing = sorted(set(served) - set(available()))
    assert not missing, (
        f"docker-compose.yml runs {missing}, but services/ has no such package "
        f"(present: {available()}); add the service or take it out of compose and deploy/k8s"
    )
    for service in served:
        run = importlib.import_module(f"loraswarm.services.{service}.app").run
        assert inspect.iscoroutinefunction(run), f"services/{service}/app.py: run must be `async def`"
        signature = inspect.signature(run).parameters
        assert {"host", "port"} <= set(signature), f"services/{service}/app.py: run(settings, *, host, port)"


def test_every_service_package_is_deployed() -> None:
    served = {
        parse_command([str(p) for p in svc["command"]])[1].get("service")
        for svc in _loraswarm_services(compose()).values()
    }
    not_deployed = sorted(set(available()) - served)
    assert not not_deployed, f"services/ has {not_deployed} but docker-compose.yml runs none of them"


def test_every_loraswarm_variable_is_a_setting(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    names = manifests.loraswarm_setting_names()
    for name, service in compose()["services"].items():
        env = environment_of(service)
        unknown = sorted(k for k in env if k.upper().startswith("LORASWARM_") and k.upper() not in names)
        assert not unknown, (
            f"compose service {name} sets {unknown}, which are not settings (README: Configuration)"
        )
        given = _container_env(service) if service.get("image") == IMAGE else {}
        try:
            settings_from(given)
        except ValueError as exc:
            pytest.fail(f"compose service {name}: its LORASWARM_* values are not valid settings: {exc}")


def test_the_environment_reaches_the_settings(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    planner = environment_of(compose()["services"]["planner"])
    settings = settings_from(
        {k: v for k, v in planner.items() if k.startswith("LORASWARM_") and v is not None}
    )
    assert settings.broker == "kafka"
    assert settings.kafka.bootstrap_servers == "kafka:9092"
    assert settings.tracing.exporter == "otlp"
    assert settings.tracing.otlp_endpoint.startswith("http://otel-collector:")
    # With the host's variables set, they win over the defaults.
    custom = compose({"KAFKA_PARTITIONS": "24", "PRIMARY_LLM_BASE_URL": "https://llm.example/v1"})
    env = environment_of(custom["services"]["specialist"])
    settings = settings_from({k: v for k, v in env.items() if k.startswith("LORASWARM_") and v is not None})
    assert settings.kafka.partitions == 24
    assert settings.orchestration.primary_llm_base_url == "https://llm.example/v1"


def test_references_inside_compose_resolve() -> None:
    doc = compose()
    services, volumes = doc["services"], set(doc.get("volumes") or {})
    used: set[str] = set()
    for name, service in services.items():
        for dependency in service.get("depends_on") or {}:
            assert dependency in services, f"{name} depends on unknown service {dependency}"
        for mount in service.get("volumes") or []:
            source = str(mount).split(":")[0]
            if source.startswith((".", "/")):
                # Bind mounts: the files are part of this repository (the collector, Prometheus
                # and Grafana configuration included).
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is not in the repository"
            else:
                assert source in volumes, f"{name} mounts undeclared volume {source}"
                used.add(source)
    assert volumes == used, f"declared but unused volumes: {sorted(volumes - used)}"
