"""The engines a specialist can answer with, behind one interface (`orchestration.specialist_engine`).

- `loraswarm`: the project's model server, through its TGI API (huggingface_hub): adapters bound
  to the tenant by `X-Tenant-Id`, several stacked with `+` (a LLaMA-Adapter user adapter), an
  unknown adapter refused with 404 `adapter_not_found` or 422 `invalid_adapter`.
- `tgi`: Hugging Face TGI, the same client. TGI serves only the adapters it was started with and
  answers an unknown `adapter_id` with the base model (deploy/docker/tgi-entrypoint.sh starts it
  with every published artifact, stacks included; restart it after a publish).
- `vllm`: vLLM's OpenAI API (the `openai` client): `model` is the adapter id (or the base model's
  served name, read once from `/v1/models`), the prompt goes to `/v1/completions` with
  `response_format` json_schema; an unknown adapter is a 404 `NotFoundError`.

Every engine's errors come out as one `EngineError` kind, so the specialist handles them the same
way: `unknown_adapter` (answer with fewer adapters), `overloaded`, `timeout`, `failed`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import openai
from huggingface_hub import AsyncInferenceClient, TextGenerationInputGrammarType

from loraswarm.shared.events import TokenUsage
from loraswarm.shared.settings import Settings
from loraswarm.shared.tracing import context_headers

EngineName = Literal["loraswarm", "tgi", "vllm"]
ErrorKind = Literal["unknown_adapter", "overloaded", "timeout", "failed"]

# Answers that mean "this adapter cannot be served here", not "the call failed": the model
# server's 404 `adapter_not_found` and 422 `invalid_adapter` (a LLaMA-Adapter, another base model,
# a malformed file), and vLLM's 404 `NotFoundError` for a name it does not know.
_CANNOT_SERVE = {(404, "adapter_not_found"), (422, "invalid_adapter"), (404, "NotFoundError")}
_OVERLOADED = {429, 503}


class EngineError(Exception):
    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Completion:
    text: str
    usage: TokenUsage
    finish_reason: str | None


class Engine(Protocol):
    """One text completion with one adapter id (None: the base model), constrained to `schema`."""

    provider: str  # OpenTelemetry's gen_ai.provider.name

    async def complete(
        self,
        prompt: str,
        adapter_id: str | None,
        *,
        max_tokens: int,
        schema: dict[str, Any],
        timeout_s: float,
    ) -> Completion: ...

    async def close(self) -> None: ...


def error_kind(status: int, body: Any) -> ErrorKind:
    """The kind of an engine's HTTP error, from its status and JSON body (TGI's or OpenAI's shape)."""
    if not isinstance(body, dict):
        body = {}
    error = body.get("error")
    kind = error.get("type") if isinstance(error, dict) else body.get("error_type")
    if (status, kind) in _CANNOT_SERVE:
        return "unknown_adapter"
    if status in _OVERLOADED:
        return "overloaded"
    return "failed"


class HubEngine:
    """TGI's API through huggingface_hub: the project's model server (`loraswarm`) and TGI (`tgi`)."""

    def __init__(self, client: AsyncInferenceClient, provider: str) -> None:
        self.client = client
        self.provider = provider

    async def complete(
        self,
        prompt: str,
        adapter_id: str | None,
        *,
        max_tokens: int,
        schema: dict[str, Any],
        timeout_s: float,
    ) -> Completion:
        try:
            output = await asyncio.wait_for(
                self.client.text_generation(
                    prompt,
                    adapter_id=adapter_id,
                    max_new_tokens=max_tokens,
                    # TGI's POST / echoes the prompt by default; a cut-off JSON answer would then
                    # hand the prompt (documents included) on as the specialist's answer.
                    return_full_text=False,
                    details=True,
                    # TGI counts the prompt only in `prefill`, one logprob per token; the model
                    # server also gives `input_length`, so it is spared that work.
                    decoder_input_details=self.provider != "loraswarm",
                    grammar=TextGenerationInputGrammarType(type="json", value=schema),
                ),
                timeout=timeout_s,
            )
        except TimeoutError as exc:
            raise EngineError("timeout", f"no answer within {timeout_s:.0f} s") from exc
        except Exception as exc:
            # huggingface_hub keeps the HTTP error as the cause.
            response = getattr(exc.__cause__, "response", None) or getattr(exc, "response", None)
            kind: ErrorKind = "failed"
            if response is not None:
                try:
                    body = response.json()
                except ValueError:
                    body = None
                kind = error_kind(response.status_code, body)
            raise EngineError(kind, f"{type(exc).__name__}: {exc}") from exc
        details = output.details
        return Completion(
            output.generated_text,
            TokenUsage(
                input_tokens=getattr(details, "input_length", None)
                or len(getattr(details, "prefill", None) or []),
                output_tokens=int(getattr(details, "generated_tokens", 0) or 0),
            ),
            str(details.finish_reason) if details is not None and details.finish_reason else None,
        )

    async def close(self) -> None:
        await self.client.close()  # type: ignore[no-untyped-call]  # untyped in huggingface_hub


class VllmEngine:
    """vLLM's OpenAI-compatible completions: `model` = the adapter id, one adapter per request."""

    provider = "vllm"

    def __init__(self, client: openai.AsyncOpenAI, base_model: str = "") -> None:
        self.client = client
        self.base_model = base_model  # "" = the model `/v1/models` lists without a parent
        self._lock = asyncio.Lock()

    async def _base(self) -> str:
        async with self._lock:
            if not self.base_model:
                models = await self.client.models.list()
                roots = [m.id for m in models.data if getattr(m, "parent", None) is None]
                if not roots:
                    raise EngineError("failed", "vLLM's /v1/models lists no base model")
                self.base_model = roots[0]
            return self.base_model

    async def complete(
        self,
        prompt: str,
        adapter_id: str | None,
        *,
        max_tokens: int,
        schema: dict[str, Any],
        timeout_s: float,
    ) -> Completion:
        try:
            response = await asyncio.wait_for(
                self.client.completions.create(
                    model=adapter_id or await self._base(),
                    prompt=prompt,
                    max_tokens=max_tokens,
                    temperature=0.0,
                    extra_headers=context_headers(),
                    extra_body={
                        "response_format": {
                            "type": "json_schema",
                            "json_schema": {"name": "answer", "schema": schema, "strict": True},
                        }
                    },
                    timeout=timeout_s,
                ),
                timeout=timeout_s,
            )
        except (TimeoutError, openai.APITimeoutError) as exc:
            raise EngineError("timeout", f"no answer within {timeout_s:.0f} s") from exc
        except openai.APIStatusError as exc:
            # The whole body (the client keeps only its `error` part, which drops TGI's `error_type`).
            try:
                body = exc.response.json()
            except ValueError:
                body = None
            raise EngineError(error_kind(exc.status_code, body), str(exc)) from exc
        except openai.APIError as exc:
            raise EngineError("failed", f"{type(exc).__name__}: {exc}") from exc
        choice = response.choices[0] if response.choices else None
        usage = response.usage
        return Completion(
            choice.text if choice else "",
            TokenUsage(
                input_tokens=usage.prompt_tokens if usage else 0,
                output_tokens=usage.completion_tokens if usage else 0,
            ),
            choice.finish_reason if choice else None,
        )

    async def close(self) -> None:
        await self.client.close()


def engine_headers(tenant_id: str, settings: Settings) -> dict[str, str]:
    """The tenant the model server binds adapters to, and the service key it checks that by."""
    headers = {"X-Tenant-Id": tenant_id}
    key = settings.orchestration.tgi_api_key
    if key is not None:
        headers["Authorization"] = f"Bearer {key.get_secret_value()}"
    return headers


def make_engine(settings: Settings, tenant_id: str) -> Engine:
    """The configured engine, acting for one tenant."""
    o = settings.orchestration
    if o.specialist_engine == "vllm":
        key = o.vllm_api_key.get_secret_value() if o.vllm_api_key is not None else "not-needed"
        client = openai.AsyncOpenAI(
            base_url=o.vllm_url,
            api_key=key,
            timeout=o.llm_timeout_s,
            max_retries=0,  # the task has its own deadline
            default_headers={"X-Tenant-Id": tenant_id},
        )
        return VllmEngine(client, o.vllm_base_model)
    hub = AsyncInferenceClient(
        base_url=o.tgi_url, timeout=o.llm_timeout_s, headers=engine_headers(tenant_id, settings)
    )
    return HubEngine(hub, "loraswarm" if o.specialist_engine == "loraswarm" else "huggingface.tgi")
