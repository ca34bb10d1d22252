"""docker-compose.yml: valid for Compose, every loraswarm command real, every LORASWARM_* a setting."""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, get_args
from urllib.parse import urlsplit

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest

from loraswarm.cli.serve import available
from loraswarm.infra import vllm as local_vllm
from loraswarm.shared.adapter_store import AdapterStore
from loraswarm.shared.models import cached_path
from loraswarm.shared.settings import OrchestrationSettings, Settings
from tests.deploy import manifests
from tests.deploy.manifests import (
    COMPOSE,
    ROOT,
    compose,
    environment_of,
    interpolate,
    option,
    parse_command,
    vllm_reads_true,
)

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
    assert images["vllm"].startswith("vllm/vllm-openai:")
    assert "text-generation-inference" in images["tgi"]
    assert "opentelemetry-collector" in images["otel-collector"]
    assert "jaeger" in images["jaeger"]
    assert "prometheus" in images["prometheus"]
    assert "grafana" in images["grafana"]
    for engine in ("vllm", "tgi"):
        gpu = services[engine]["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpu["capabilities"] == ["gpu"], engine


def _container_env(service: dict[str, Any]) -> dict[str, str]:
    """The LORASWARM_* a loraswarm container gets: the image's ENV, then compose's environment."""
    env = {k: v for k, v in manifests.dockerfile_env().items() if k.startswith("LORASWARM_")}
    env.update(
        {k: v for k, v in environment_of(service).items() if k.startswith("LORASWARM_") and v is not None}
    )
    return env


def _mounts(service: dict[str, Any]) -> dict[str, tuple[str, bool]]:
    """A compose service's volumes, short syntax: source -> (path in the container, read-only)."""
    found = {}
    for mount in service.get("volumes") or []:
        source, target, *mode = str(mount).split(":")
        found[source] = (target, "ro" in (mode[0].split(",") if mode else []))
    return found


def _vllm_argv(service: dict[str, Any]) -> list[str]:
    return [str(part) for part in [*service["entrypoint"], *service["command"]]]


def test_vllm_loads_adapters_at_run_time(settings_from: Callable[[dict[str, str]], Settings]) -> None:
    services = compose()["services"]
    vllm = services["vllm"]
    argv = _vllm_argv(vllm)
    assert argv[:2] == ["vllm", "serve"]
    # Run-time loading (POST /v1/load_lora_adapter, what vllm-loader calls) needs both.
    assert "--enable-lora" in argv
    assert vllm_reads_true(environment_of(vllm).get("VLLM_ALLOW_RUNTIME_LORA_UPDATING"))
    assert int(option(argv, "--max-cpu-loras")) >= int(option(argv, "--max-loras"))
    # The loader leaves out adapters above the rank it believes vLLM takes: the same number.
    loader = settings_from(_container_env(services["vllm-loader"]))
    assert int(option(argv, "--max-lora-rank")) == loader.orchestration.vllm_max_lora_rank
    # vLLM serves the folder models-pull wrote (<model_cache>/<base model>), once it is written.
    pull = settings_from(_container_env(services["models-pull"]))
    models_at, read_only = _mounts(vllm)["models"]
    assert read_only
    assert argv[2] == f"{models_at}/{cached_path(pull).relative_to(pull.model_cache)}"
    assert vllm["depends_on"]["models-pull"]["condition"] == "service_completed_successfully"
    # The base model under the name the local vLLM (and its tests) use; the specialists find it
    # by that name or, with vllm_base_model empty, as the model without a parent.
    served = option(argv, "--served-model-name")
    assert served == local_vllm.SERVED_NAME
    specialist = settings_from(_container_env(services["specialist"]))
    assert specialist.orchestration.vllm_base_model in ("", served)


def test_vllm_and_its_loader_see_the_adapter_store_at_the_same_path(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    """vllm-loader hands vLLM the folders by its own absolute paths (`lora_path`): vLLM must find
    them there, so both mount the store where the loader's settings put it, and the trainer
    writes it."""
    services = compose()["services"]
    loader = settings_from(_container_env(services["vllm-loader"]))
    root = str(AdapterStore.under(loader.data_dir).root)
    for name in ("vllm", "vllm-loader"):
        target, read_only = _mounts(services[name])["adapters"]
        assert target == root, f"{name} mounts the adapter store at {target}, the loader reads {root}"
        assert read_only, f"{name}: only the trainer writes the adapter store"
    assert _mounts(services["trainer"])["adapters"] == (root, False)
    path, params = parse_command([str(p) for p in services["vllm-loader"]["command"]])
    assert (path, params["service"], params["broker"]) == (["serve"], "vllm_loader", "kafka")
    # It retries vLLM until vLLM answers, so it waits for Kafka only.
    assert set(services["vllm-loader"]["depends_on"]) == {"kafka"}


def test_the_specialists_answer_with_vllm_by_default(
    settings_from: Callable[[dict[str, str]], Settings],
) -> None:
    services = compose()["services"]
    vllm = services["vllm"]
    port = int(option(_vllm_argv(vllm), "--port"))
    assert f"localhost:{port}/health" in " ".join(vllm["healthcheck"]["test"])
    vllm_key = environment_of(vllm)["VLLM_API_KEY"]
    assert vllm_key
    for name in ("specialist", "vllm-loader"):
        o = settings_from(_container_env(services[name])).orchestration
        assert o.specialist_engine == "vllm", name
        url = urlsplit(o.vllm_url)
        assert (url.hostname, url.port, url.path.rstrip("/")) == ("vllm", port, "/v1"), name
        assert o.vllm_api_key is not None and o.vllm_api_key.get_secret_value() == vllm_key, name
    # The host's variables move both ends together.
    custom = compose({"SPECIALIST_ENGINE": "tgi", "VLLM_API_KEY": "k-123"})["services"]
    o = settings_from(_container_env(custom["specialist"])).orchestration
    assert o.specialist_engine == "tgi"
    assert o.vllm_api_key is not None and o.vllm_api_key.get_secret_value() == "k-123"
    assert environment_of(custom["vllm"])["VLLM_API_KEY"] == "k-123"


def test_tgi_starts_only_with_its_profile() -> None:
    services = compose()["services"]
    assert services["tgi"].get("profiles") == ["tgi"]
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert {"vllm", "vllm-loader", "specialist", "model-server"} <= default
    for name in default:
        # A dependency on a service in a profile would start it (or fail) without the profile.
        assert "tgi" not in (services[name].get("depends_on") or {}), name


def test_the_header_documents_each_engine() -> None:
    """The commands in the file's header name real engines, TGI's with its profile."""
    header = COMPOSE.read_text().split("\nname:", 1)[0]
    engines = set(get_args(OrchestrationSettings.model_fields["specialist_engine"].annotation))
    documented = {}
    for line in header.splitlines():
        for engine in re.findall(r"SPECIALIST_ENGINE=(\S+)", line):
            assert engine in engines, f"the header names an engine {engine!r}; there are {sorted(engines)}"
            documented[engine] = line
    assert set(documented) == engines - {"vllm"}, documented  # vllm: the default, no variable
    assert "--profile tgi" in documented["tgi"]
    assert "--scale vllm=0" in documented["loraswarm"]


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
