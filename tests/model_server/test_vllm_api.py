"""Clients written for vLLM work against the model server unchanged: the `openai` client with
`model` = an adapter on /v1/completions and /v1/chat/completions, /v1/models, an unknown adapter
refused with 404, and vLLM's run-time /v1/load_lora_adapter and /v1/unload_lora_adapter."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.model_server.conftest import Served

PROMPT = "The three most important things when onboarding a new customer are"


def client(served: Served, tenant: str = "acme") -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{served.url}/v1", api_key="unused", default_headers={"X-Tenant-Id": tenant}, max_retries=0
    )


def test_completions_with_an_adapter_as_the_model(served: Served) -> None:
    api = client(served)
    models = {m.id: m for m in api.models.list().data}
    listed = set(models)
    assert {"acme/support", "acme/user-7"} <= listed and not any(m.startswith("globex/") for m in listed)
    # vLLM's shape: an adapter's parent is the base model, its root the folder it is served from.
    support = models["acme/support"].model_dump()
    assert (
        support["parent"] == "SmolLM2-135M-Instruct"
        and models["SmolLM2-135M-Instruct"].model_dump()["parent"] is None
    )
    assert support["root"] == str(served.store.resolve("acme/support").path)
    adapted = api.completions.create(model="acme/support", prompt=PROMPT, max_tokens=8, temperature=0)
    base = api.completions.create(model="SmolLM2-135M-Instruct", prompt=PROMPT, max_tokens=8, temperature=0)
    assert adapted.model == "acme/support" and adapted.object == "text_completion"
    assert adapted.usage is not None and adapted.usage.completion_tokens == 8
    assert adapted.choices[0].finish_reason == "length"
    # The same greedy request through TGI's route with the adapter: the same text.
    tgi = httpx.post(
        f"{served.url}/generate",
        json={"inputs": PROMPT, "parameters": {"adapter_id": "acme/support", "max_new_tokens": 8}},
        headers={"X-Tenant-Id": "acme"},
        timeout=120,
    ).json()
    assert adapted.choices[0].text == tgi["generated_text"] != base.choices[0].text
    chat = api.chat.completions.create(
        model="acme/support", messages=[{"role": "user", "content": "Hello"}], max_tokens=4, temperature=0
    )
    assert chat.model == "acme/support" and chat.choices[0].message.content


def test_an_unknown_or_foreign_adapter_and_unsupported_fields_are_refused(served: Served) -> None:
    api = client(served)
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="acme/nobody", prompt=PROMPT, max_tokens=4)
    with pytest.raises(openai.PermissionDeniedError):
        api.completions.create(model="globex/support", prompt=PROMPT, max_tokens=4)
    with pytest.raises(openai.UnprocessableEntityError) as streamed:
        api.completions.create(model="acme/support", prompt=PROMPT, max_tokens=4, stream=True)
    assert "`stream`" in streamed.value.response.text
    with pytest.raises(openai.UnprocessableEntityError) as several:
        api.completions.create(model="acme/support", prompt=["a", "b"], max_tokens=4)
    assert "one string" in several.value.response.text


def test_run_time_load_and_unload_as_vllm_has_them(served: Served) -> None:
    stored = str(served.store.resolve("acme/user-7").path)
    with httpx.Client(base_url=served.url, timeout=120) as http:
        loaded = http.post("/v1/load_lora_adapter", json={"lora_name": "acme/user-7", "lora_path": stored})
        assert loaded.status_code == 200 and "added successfully" in loaded.text
        resident = {a["adapter_id"] for a in http.get("/admin/adapters").json()["resident"]}
        assert any(a.startswith("acme/user-7@") for a in resident), resident
        elsewhere = http.post("/v1/load_lora_adapter", json={"lora_name": "acme/user-7", "lora_path": "/tmp"})
        assert elsewhere.status_code == 422 and "trainer's gate" in elsewhere.json()["error"]
        missing = http.post("/v1/load_lora_adapter", json={"lora_name": "acme/nobody"})
        assert missing.status_code == 404
        unloaded = http.post("/v1/unload_lora_adapter", json={"lora_name": "acme/user-7"})
        assert unloaded.status_code == 200 and "removed successfully" in unloaded.text
        again = http.post("/v1/unload_lora_adapter", json={"lora_name": "acme/user-7"})
        assert again.status_code == 404 and "cannot be found" in again.json()["error"]
