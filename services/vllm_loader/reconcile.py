"""What vLLM should have loaded, what it has, and the calls that make the two agree.

vLLM keeps run-time LoRA adapters by name (`POST /v1/load_lora_adapter`, `/v1/unload_lora_adapter`,
with `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) and lists them in `/v1/models` with the folder each
was loaded from as `root`. The adapter store says what should be served: every adapter's current
version, served stacks included (shared/stacks.py). Comparing the two by (name, folder) covers
every way the store changes: a publish, a rollback (another version's folder), a withdrawn stack
or a deleted adapter (a name vLLM has that the store no longer serves), and adapters published
from the CLI, which emit no event.

A changed adapter is unloaded before it is loaded again: vLLM answers a load of a name it has with
an error, and a same-name reload has served stale weights (vLLM #42125).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from loraswarm.shared.adapter_store import AdapterStore

log = logging.getLogger("loraswarm.vllm_loader")


@dataclass(frozen=True)
class Plan:
    unload: list[str] = field(default_factory=list)  # names, in order
    load: list[tuple[str, str]] = field(default_factory=list)  # (name, folder)

    def __bool__(self) -> bool:
        return bool(self.unload or self.load)


@dataclass(frozen=True)
class Applied:
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # name -> vLLM's answer


def wanted(store: AdapterStore, *, max_rank: int) -> tuple[dict[str, str], dict[str, str]]:
    """(what vLLM should serve: `tenant/name` -> folder of its current version; what it cannot,
    with why). vLLM serves LoRA adapters up to `--max-lora-rank` only: a LLaMA-Adapter, or a rank
    above the limit, is reported and left out instead of failing every reconcile."""
    serve: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for version in store.list():
        name = version.ref.unversioned
        m = version.manifest
        if m.method != "lora":
            skipped[name] = f"{m.method} adapters are served by the project's model server only"
            continue
        rank = _rank(version.path)
        if rank is not None and rank > max_rank:
            skipped[name] = f"rank {rank} is above vLLM's --max-lora-rank {max_rank}"
            continue
        serve[name] = str(version.path.resolve())
    return serve, skipped


def _rank(folder: Path) -> int | None:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return None
    r = config.get("r")
    return int(r) if isinstance(r, int) else None


def loaded(models: dict[str, Any], base: str | None = None) -> dict[str, str]:
    """The adapters in vLLM's `/v1/models` answer: name -> the folder it was loaded from (`root`).
    The base model has no parent (or is the served name `base`)."""
    found: dict[str, str] = {}
    for entry in models.get("data") or []:
        if not isinstance(entry, dict) or entry.get("parent") is None or entry.get("id") == base:
            continue
        found[str(entry["id"])] = str(entry.get("root") or "")
    return found


def plan(want: dict[str, str], have: dict[str, str]) -> Plan:
    """The calls that turn `have` into `want`: unload what is gone or changed, then load what is
    missing or changed. Names in `have` that no tenant's store names are vLLM's own (static
    `--lora-modules`) only if they have no `/`: adapter ids always do, so those are left alone."""
    unload = [n for n in sorted(have) if "/" in n and want.get(n) != have[n]]
    load = [(n, want[n]) for n in sorted(want) if have.get(n) != want[n]]
    return Plan(unload, load)


async def apply(client: httpx.AsyncClient, todo: Plan) -> Applied:
    """Carry out a plan against vLLM's API; one adapter vLLM refuses does not stop the others."""
    done = Applied()
    for name in todo.unload:
        response = await client.post("/v1/unload_lora_adapter", json={"lora_name": name})
        if response.is_success:
            done.unloaded.append(name)
        else:
            done.failed[name] = f"unload: HTTP {response.status_code}: {response.text[:300]}"
    for name, folder in todo.load:
        response = await client.post("/v1/load_lora_adapter", json={"lora_name": name, "lora_path": folder})
        if response.is_success:
            done.loaded.append(name)
        else:
            done.failed[name] = f"load: HTTP {response.status_code}: {response.text[:300]}"
    return done


async def reconcile(client: httpx.AsyncClient, store: AdapterStore, *, max_rank: int) -> Applied:
    """One pass: read vLLM's adapters, compare with the store, load and unload the difference."""
    response = await client.get("/v1/models")
    response.raise_for_status()
    want, skipped = wanted(store, max_rank=max_rank)
    for name, why in skipped.items():
        log.debug("not loading %s into vLLM: %s", name, why)
    done = await apply(client, plan(want, loaded(response.json())))
    for name in done.loaded:
        log.info("vLLM loaded %s from %s", name, want[name])
    for name in done.unloaded:
        log.info("vLLM unloaded %s", name)
    for name, why in done.failed.items():
        log.error("vLLM refused %s: %s", name, why)
    return done
