"""Adapters at run time: tenant-bound, never a silent fall-back, never stale, bounded in memory, refused when broken."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from pydantic import SecretStr
from safetensors.torch import load_file, save_file

from loraswarm.services.model_server.adapters import AdapterRegistry, LoraTarget, load_lora
from loraswarm.services.model_server.app import wire_events
from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore, InvalidAdapter
from loraswarm.shared.bus import EventBus
from loraswarm.shared.events import AdapterPublished
from loraswarm.shared.settings import Settings
from tests.model_server.conftest import AdapterSpec, Served

PROMPT = "Our support hours are"


@pytest.fixture
def http(served: Served) -> httpx.Client:
    return httpx.Client(base_url=served.url, timeout=120)


def generate(
    http: httpx.Client, adapter_id: str | None, tenant: str | None = "acme", **params: Any
) -> httpx.Response:
    parameters = {"max_new_tokens": 6, "details": True, **params}
    if adapter_id:
        parameters["adapter_id"] = adapter_id
    return http.post(
        "/generate",
        json={"inputs": PROMPT, "parameters": parameters},
        headers={"X-Tenant-Id": tenant} if tenant else {},
    )


def logprobs(answer: httpx.Response) -> list[float]:
    assert answer.status_code == 200, answer.text
    return [t["logprob"] for t in answer.json()["details"]["tokens"]]


# ---------------------------------------------------------------- tenancy and unknown adapters


def test_unknown_foreign_and_tenantless_adapters_are_refused(http: httpx.Client) -> None:
    cases = [
        ("acme/nope", "acme", 404, "adapter_not_found", "adapter 'acme/nope' does not exist"),
        ("acme/support@99", "acme", 404, "adapter_not_found", "adapter acme/support has no version 99"),
        ("not an id", "acme", 404, "adapter_not_found", "'not an id' is not an adapter id"),
        (
            "globex/support",
            "acme",
            403,
            "adapter_forbidden",
            "adapter 'globex/support' does not belong to tenant 'acme'",
        ),
        (
            "globex/nope",
            "acme",
            403,
            "adapter_forbidden",
            "adapter 'globex/nope' does not belong to tenant 'acme'",
        ),
        ("acme/support", None, 403, "adapter_forbidden", "adapter 'acme/support' needs the request's tenant"),
        ("acme/support+globex/support", "acme", 403, "adapter_forbidden", "does not belong to tenant 'acme'"),
        ("+".join(["acme/support"] * 5), "acme", 403, "adapter_forbidden", "at most 4 adapters"),
    ]
    for adapter_id, tenant, status, error_type, message in cases:
        answer = generate(http, adapter_id, tenant)
        assert answer.status_code == status, (adapter_id, answer.text)
        assert answer.json()["error_type"] == error_type
        assert message in answer.json()["error"]
    # Foreign ids are refused before the store is read: an existing and a missing one look alike.
    assert generate(http, "globex/support").json()["error"].replace("support", "x") == generate(
        http, "globex/nope"
    ).json()["error"].replace("nope", "x")
    # The base model needs no tenant.
    assert generate(http, None, tenant=None).status_code == 200


@contextmanager
def limits_changed(served: Served, **changes: Any) -> Iterator[None]:
    saved = {name: getattr(served.server.limits, name) for name in changes}
    for name, value in changes.items():
        setattr(served.server.limits, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(served.server.limits, name, value)


def test_api_keys_decide_the_tenant(http: httpx.Client, served: Served) -> None:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": 2, "adapter_id": "acme/support"}}
    with limits_changed(served, api_keys={"key-acme": "acme", "key-globex": "globex"}):
        assert http.post("/generate", json=body).status_code == 401
        assert http.post("/generate", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert (
            http.post("/generate", json=body, headers={"Authorization": "Bearer key-acme"}).status_code == 200
        )
        assert (
            http.post("/generate", json=body, headers={"Authorization": "Bearer key-globex"}).status_code
            == 403
        )
        spoofed = {"Authorization": "Bearer key-globex", "X-Tenant-Id": "acme"}
        assert http.post("/generate", json=body, headers=spoofed).status_code == 403
        chat = {"model": "acme/support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (
            http.post(
                "/v1/chat/completions", json=chat, headers={"Authorization": "Bearer key-acme"}
            ).status_code
            == 200
        )
        assert (
            http.post(
                "/v1/chat/completions", json=chat, headers={"Authorization": "Bearer key-globex"}
            ).status_code
            == 403
        )
    with limits_changed(served, admin_api_key=SecretStr("admin-secret")):
        assert http.get("/admin/adapters").status_code == 401
        assert (
            http.get("/admin/adapters", headers={"Authorization": "Bearer admin-secret"}).status_code == 200
        )


# ---------------------------------------------------------------- versions


def test_a_new_version_is_served_at_once_and_never_the_old_weights(
    http: httpx.Client, served: Served
) -> None:
    v1 = AdapterSpec("acme", "faq", 8, ("q_proj", "v_proj"), seed=21)
    v2 = AdapterSpec("acme", "faq", 8, ("q_proj", "v_proj"), seed=22)
    served.factory.publish(served.store, v1)
    first = logprobs(generate(http, "acme/faq"))
    assert http.post("/admin/adapters", json={"adapter_id": "acme/faq"}).json()["adapter_id"] == "acme/faq@1"

    served.factory.publish(served.store, v2)  # no event, no admin call: the next request must see v2
    second = logprobs(generate(http, "acme/faq"))
    assert second == logprobs(generate(http, "acme/faq@2"))
    assert first == logprobs(generate(http, "acme/faq@1"))
    assert second != first

    # Deleted and published again: versions restart at 1, with other weights; no stale cache entry.
    served.store.delete("acme", "faq")
    assert generate(http, "acme/faq").status_code == 404
    v3 = AdapterSpec("acme", "faq", 8, ("q_proj", "v_proj"), seed=23)
    assert served.factory.publish(served.store, v3).ref.version == "1"
    third = logprobs(generate(http, "acme/faq@1"))
    assert third not in (first, second)


async def test_adapter_published_events_load_the_new_version(settings: Settings, served: Served) -> None:
    """`adapter.published` on the in-process broker and on the real Kafka."""
    bus = EventBus(settings, service="model-server-test")
    wire_events(bus, served.server, group="model-server-test")
    spec = AdapterSpec("acme", f"evt-{settings.broker}", 4, ("q_proj",), seed=31)
    async with bus:
        for expected in ("1", "2"):
            version = served.factory.publish(served.store, spec)
            await bus.publish(
                AdapterPublished(
                    tenant_id="acme",
                    adapter_id=spec.id,
                    version=version.ref.version or "",
                    uri=str(version.path),
                )
            )
            wanted = f"{spec.id}@{expected}"
            await _until(lambda: wanted in {a.id for a in served.server.registry.resident()})  # noqa: B023
            assert not any(
                a.id.startswith(f"{spec.id}@") and a.id != f"{spec.id}@{expected}"
                for a in served.server.registry.resident()
            )


async def _until(check: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- broken adapters


def _break(kind: str) -> Callable[[Path], None]:
    def corrupt_bytes(folder: Path) -> None:
        (folder / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 100)

    def not_json(folder: Path) -> None:
        (folder / "adapter_config.json").write_text("{oops")

    def config_edit(**changes: Any) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            config = json.loads((folder / "adapter_config.json").read_text())
            config.update(changes)
            (folder / "adapter_config.json").write_text(json.dumps(config))

        return edit

    def tensors_edit(change: Callable[[dict[str, torch.Tensor]], None]) -> Callable[[Path], None]:
        def edit(folder: Path) -> None:
            path = folder / "adapter_model.safetensors"
            tensors = load_file(str(path))
            change(tensors)
            save_file(tensors, str(path))

        return edit

    def nan(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if "lora_B" in k)
        t[key][0, 0] = float("nan")

    def wrong_shape(t: dict[str, torch.Tensor]) -> None:
        key = next(k for k in t if "lora_A" in k)
        t[key] = t[key][:, :100].contiguous()

    def lm_head(t: dict[str, torch.Tensor]) -> None:
        t["base_model.model.lm_head.lora_A.weight"] = torch.zeros(8, 576)
        t["base_model.model.lm_head.lora_B.weight"] = torch.zeros(49152, 8)

    def missing_b(t: dict[str, torch.Tensor]) -> None:
        del t[next(k for k in t if "lora_B" in k)]

    return {
        "corrupt": corrupt_bytes,
        "not_json": not_json,
        "dora": config_edit(use_dora=True),
        "bias": config_edit(bias="all"),
        "modules_to_save": config_edit(modules_to_save=["lm_head"]),
        "not_lora": config_edit(peft_type="IA3"),
        "nan": tensors_edit(nan),
        "shape": tensors_edit(wrong_shape),
        "lm_head": tensors_edit(lm_head),
        "missing_b": tensors_edit(missing_b),
    }[kind]


BROKEN = {
    "corrupt": "adapter_model.safetensors cannot be read",
    "not_json": "adapter_config.json cannot be read",
    "dora": "uses DoRA",
    "bias": "trains biases",
    "modules_to_save": "saves whole modules",
    "not_lora": "is a IA3 adapter",
    "nan": "NaN or infinite",
    "shape": "has A (8, 100)",
    "lm_head": "targets 'lm_head'",
    "missing_b": "lacks lora_B",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_malformed_adapter_is_refused_at_load_while_serving_goes_on(
    kind: str, http: httpx.Client, served: Served
) -> None:
    spec = AdapterSpec("acme", f"broken-{kind.replace('_', '-')}", 8, ("q_proj", "v_proj"), seed=41)
    folder = served.factory.save(spec)
    _break(kind)(folder)
    served.factory.publish(served.store, spec, folder)

    loaded = http.post("/admin/adapters", json={"adapter_id": spec.id})
    assert loaded.status_code == 422
    assert loaded.json()["error_type"] == "invalid_adapter"
    assert BROKEN[kind] in loaded.json()["error"]
    used = generate(http, spec.id)
    assert (used.status_code, used.json()["error_type"]) == (422, "invalid_adapter")
    assert (
        http.get("/admin/adapters")
        .json()["errors"][f"{spec.id}@1"]
        .endswith(loaded.json()["error"].split(": ", 1)[-1])
    )
    # Everything else is still served.
    assert generate(http, "acme/support").status_code == 200
    assert http.get("/health").status_code == 200


def test_an_adapter_for_another_base_model_is_refused(served: Served) -> None:
    spec = AdapterSpec("acme", "other-base", 4, ("q_proj",), seed=51)
    version = served.store.publish(
        served.factory.save(spec),
        AdapterManifest(
            tenant_id="acme", name="other-base", base_model="llama-7b", base_model_hash="0123456789abcdef"
        ),
    )
    target = LoraTarget(
        served.server.lora_modules, "cpu", torch.float32, 64, base_model_hash=served.factory.base_hash
    )
    with pytest.raises(InvalidAdapter, match="trained on base model 'llama-7b'"):
        load_lora(version, target)


# ---------------------------------------------------------------- the LRU


def test_a_thousand_registered_adapters_with_memory_bounded_by_the_lru(
    served: Served, tmp_path: Path
) -> None:
    # A real peft adapter, small (rank 2 on one layer's q_proj), published 1,000 times.
    spec = AdapterSpec("tiny", "seed", 2, ("q_proj",), seed=61)
    model = served.factory.peft_model(spec)
    folder = tmp_path / "tiny"
    model.save_pretrained(folder)
    _keep_layer_zero(folder)
    store = AdapterStore(tmp_path / "adapters")
    for i in range(1000):
        store.publish(
            folder, AdapterManifest(tenant_id="tiny", name=f"a{i:04d}", base_model="SmolLM2-135M-Instruct")
        )
    target = LoraTarget(served.server.lora_modules, "cpu", torch.float32, 64)
    registry = AdapterRegistry(store, lambda v: load_lora(v, target), max_resident=8, max_bytes=1 << 30)
    most = 0
    for i in range(1000):
        registry.get(f"tiny/a{i:04d}")
        most = max(most, len(registry.resident()))
    assert len(store.list("tiny")) == 1000
    assert most == 8
    assert registry.stats.loads == 1000 and registry.stats.evictions == 992
    one = registry.resident()[0].nbytes
    assert registry.resident_bytes() == 8 * one
    registry.get("tiny/a0999")  # resident: a hit, no load
    assert registry.stats.hits == 1 and registry.stats.loads == 1000
    # The byte bound works the same way.
    small = AdapterRegistry(store, lambda v: load_lora(v, target), max_resident=1000, max_bytes=3 * one)
    for i in range(20):
        small.get(f"tiny/a{i:04d}")
    assert len(small.resident()) == 3


def _keep_layer_zero(folder: Path) -> None:
    path = folder / "adapter_model.safetensors"
    tensors = {k: v for k, v in load_file(str(path)).items() if ".layers.0." in k}
    save_file(tensors, str(path))


def test_admin_unload_and_listing(http: httpx.Client) -> None:
    assert generate(http, "acme/user-7").status_code == 200
    listing = http.get("/admin/adapters").json()
    assert "acme/user-7@1" in {a["adapter_id"] for a in listing["resident"]}
    assert listing["max_resident"] == 16
    assert http.delete("/admin/adapters/acme/user-7").json() == {"unloaded": 1}
    assert "acme/user-7@1" not in {a["adapter_id"] for a in http.get("/admin/adapters").json()["resident"]}
    assert generate(http, "acme/user-7").status_code == 200  # loads again on use
