"""A real model server for the tests: the pulled base model, real peft adapters, uvicorn on a free port.

One server runs for the whole session (loading the model takes seconds); tests that change one
of its limits restore it. Adapters are made with peft exactly as a trainer would make them
(`get_peft_model(...).save_pretrained(dir)`, with random B so they change the output) and
published into the server's adapter store.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import uvicorn
from peft import LoraConfig, get_peft_model

from loraswarm.services.model_server.api import create_app
from loraswarm.services.model_server.server import ModelServer
from loraswarm.shared import models
from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore, AdapterVersion
from loraswarm.shared.settings import ModelServerSettings, Settings
from tests.processes import free_port

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class AdapterSpec:
    tenant: str
    name: str
    rank: int
    targets: tuple[str, ...]
    seed: int
    scale: float = 1.0  # multiplies peft's random B: 1.0 changes the output a lot

    @property
    def id(self) -> str:
        return f"{self.tenant}/{self.name}"


# The adapters every test can use: mixed ranks, different target modules, three tenants.
ADAPTERS = {
    "acme/support": AdapterSpec("acme", "support", 8, ("q_proj", "v_proj"), seed=1),
    "acme/user-7": AdapterSpec("acme", "user-7", 4, tuple(ALL_LINEAR), seed=2, scale=0.5),
    "globex/support": AdapterSpec("globex", "support", 16, tuple(ALL_LINEAR), seed=3),
    "initech/legal": AdapterSpec("initech", "legal", 32, ("q_proj", "k_proj", "v_proj", "o_proj"), seed=4),
}


class AdapterFactory:
    """Makes real peft LoRA adapters for the base model and publishes them."""

    def __init__(self, settings: Settings, root: Path) -> None:
        self.base, _ = models.load(settings, device=models.Device("cpu", torch.float32))
        self.root = root
        self.base_hash = models.model_hash(models.resolve(settings))

    def peft_model(self, spec: AdapterSpec) -> Any:
        torch.manual_seed(spec.seed)
        config = LoraConfig(
            r=spec.rank, lora_alpha=2 * spec.rank, target_modules=list(spec.targets), init_lora_weights=False
        )
        model = get_peft_model(copy.deepcopy(self.base), config)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.mul_(spec.scale)
        model.eval()
        return model

    def save(self, spec: AdapterSpec, tag: str = "") -> Path:
        folder = self.root / f"{spec.tenant}--{spec.name}{tag}--{time.monotonic_ns()}"
        self.peft_model(spec).save_pretrained(folder)
        return folder

    def publish(self, store: AdapterStore, spec: AdapterSpec, folder: Path | None = None) -> AdapterVersion:
        manifest = AdapterManifest(
            tenant_id=spec.tenant,
            name=spec.name,
            base_model="SmolLM2-135M-Instruct",
            base_model_hash=self.base_hash,
        )
        return store.publish(folder or self.save(spec), manifest)


@dataclass
class Served:
    url: str
    server: ModelServer
    store: AdapterStore
    factory: AdapterFactory

    def headers(self, tenant: str | None) -> dict[str, str]:
        return {"X-Tenant-Id": tenant} if tenant else {}


def small_limits() -> ModelServerSettings:
    # fp32 whatever the CPU: the tests compare served tokens and logprobs with peft's fp32 models.
    return ModelServerSettings(
        max_input_tokens=256,
        max_total_tokens=512,
        max_batch_size=16,
        max_resident_adapters=16,
        dtype="float32",
    )


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("model-server")
    settings = Settings(broker="memory", data_dir=root / "data", device="cpu", model_server=small_limits())
    factory = AdapterFactory(settings, root / "adapters-src")
    store = AdapterStore.under(settings.data_dir)
    for spec in ADAPTERS.values():
        factory.publish(store, spec)
    server = ModelServer.load(settings)
    server.start()
    port = free_port()
    http = uvicorn.Server(
        uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=http.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not http.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", server, store, factory)
    http.should_exit = True
    thread.join(timeout=30)
    server.stop()
