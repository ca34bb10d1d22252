"""Tenant configuration: each company's specialists, their adapters and sources, and its limits.

One YAML file per tenant in the tenants folder (`LORASWARM_ORCHESTRATION__TENANTS_DIR`), named
`<tenant_id>.yaml`, validated by `TenantConfig`. `TenantRegistry` re-reads a file when it changes
on disk (hot reload); a file that no longer validates keeps the last good version in force and
says why in the log, so a typo never takes a tenant down.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from loraswarm.shared.ids import TENANT_ID

log = logging.getLogger("loraswarm.tenants")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SpecialistConfig(_Config):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="Unique inside the tenant.")
    description: str = Field(description="What it knows; the planner reads this to choose specialists.")
    instructions: str = Field(description="The specialist's system prompt.")
    adapter: Literal["company", "user", "none"] = Field(
        default="company",
        description="`company`: the tenant's adapter; `user`: the requesting user's adapter stacked on "
        "the company's (the company's alone for a request without a user); `none`: the base model.",
    )
    sources: list[str] = Field(
        default_factory=list, description="Data sources it may retrieve from; empty = all."
    )
    handoffs: list[str] = Field(default_factory=list, description="Specialists it may hand a task to.")
    max_new_tokens: int = Field(default=160, ge=1, le=2048)


class Limits(_Config):
    deadline_s: float = Field(default=60.0, gt=0, le=3600, description="Whole-request deadline.")
    max_specialists: int = Field(default=3, ge=1, le=16, description="Specialists per plan.")
    max_handoffs: int = Field(default=2, ge=0, le=8, description="Hand-off hops per task.")
    token_budget: int = Field(default=6000, ge=100, description="Tokens (in + out) per request, all steps.")
    max_question_chars: int = Field(default=4000, ge=1, description="Longest accepted question.")


class PlanStep(_Config):
    specialist: str
    question: str = Field(
        default="{question}", description="`{question}` is replaced by the user's question."
    )


class DeclaredSecret(_Config):
    text: str = Field(min_length=6, description="A string no answer outside its scope may contain.")
    user_id: str | None = Field(
        default=None,
        description="Whose secret it is: that user's answers may contain it, nobody else's; unset = "
        "the company's, which no answer may contain.",
    )


class TenantConfig(_Config):
    tenant_id: str = Field(pattern=rf"^{TENANT_ID}$")
    display_name: str = ""
    company_adapter: str | None = Field(
        default=None,
        description="Adapter name of the company adapter (`<tenant>/<name>`); default `<tenant>/company`.",
    )
    user_adapter_prefix: str = Field(
        default="user-", description="A user's adapter is `<tenant>/<prefix><user_id>`."
    )
    company_adapter_method: Literal["lora", "llama_adapter"] = Field(
        default="lora",
        description="How the company adapter is trained: `lora` or `llama_adapter` (LLaMA-Adapter); the "
        "model server serves both. A user adapter can be trained on top of a LoRA company adapter only.",
    )
    user_adapter_method: Literal["lora", "llama_adapter"] = Field(
        default="lora",
        description="How each user's adapter is trained; a user LLaMA-Adapter over a LoRA company "
        "adapter is served exactly as trained (the LoRA merged, the prompt on top).",
    )
    users: list[str] | None = Field(default=None, description="Allowed user ids; unset = any user.")
    slack_team_ids: list[str] = Field(default_factory=list, description="Slack workspaces of this tenant.")
    slack_users: dict[str, str] = Field(
        default_factory=dict,
        description="Slack user id -> the tenant's user id; a Slack user not listed asks as the company "
        "(no private data, no user adapter).",
    )
    limits: Limits = Limits()
    specialists: list[SpecialistConfig] = Field(min_length=1)
    default_plan: list[PlanStep] = Field(
        default_factory=list,
        description="Used when the primary LLM gives no valid plan; default: all specialists.",
    )
    planning: Literal["auto", "llm"] = Field(
        default="auto",
        description="`auto`: when every specialist fits in `limits.max_specialists`, all of them answer "
        "and the primary LLM is not asked to choose (its call is most of a small tenant's planning "
        "time, and the composer answers each part of the question from all answers). `llm`: the "
        "primary LLM always chooses.",
    )
    secrets: list[DeclaredSecret] = Field(
        default_factory=list,
        description="Strings the planner's output guardrail withholds answers for (besides every "
        "other scope's canaries).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TenantConfig:
        names = [s.name for s in self.specialists]
        if len(set(names)) != len(names):
            raise ValueError(f"specialist names must be unique, got {names}")
        for spec in self.specialists:
            unknown = set(spec.handoffs) - set(names)
            if unknown:
                raise ValueError(f"specialist {spec.name!r} hands off to unknown {sorted(unknown)}")
        for step in self.default_plan:
            if step.specialist not in names:
                raise ValueError(f"default_plan names unknown specialist {step.specialist!r}")
        return self

    def specialist(self, name: str) -> SpecialistConfig | None:
        return next((s for s in self.specialists if s.name == name), None)

    def fallback_plan(self) -> list[PlanStep]:
        steps = self.default_plan or [PlanStep(specialist=s.name) for s in self.specialists]
        return steps[: self.limits.max_specialists]

    def adapters_for(self, spec: SpecialistConfig, user_id: str | None) -> list[str]:
        """The adapter stack a specialist runs with for this request (company first, then user)."""
        if spec.adapter == "none":
            return []
        company = self.company_adapter or f"{self.tenant_id}/company"
        if spec.adapter == "user" and user_id:
            return [company, f"{self.tenant_id}/{self.user_adapter_prefix}{user_id}"]
        return [company]

    def adapter_method(self, user_id: str | None) -> Literal["lora", "llama_adapter"]:
        """The method the scope's adapter is trained with: the company's, or a user's."""
        return self.user_adapter_method if user_id else self.company_adapter_method

    def allows_user(self, user_id: str | None) -> bool:
        return user_id is None or self.users is None or user_id in self.users


class TenantConfigError(Exception):
    pass


def load_tenant_file(path: Path) -> TenantConfig:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TenantConfigError(f"{path}: cannot read YAML: {exc}") from exc
    try:
        config = TenantConfig.model_validate(data)
    except ValidationError as exc:
        raise TenantConfigError(f"{path}: {exc}") from exc
    if config.tenant_id != path.stem:
        raise TenantConfigError(f"{path}: tenant_id {config.tenant_id!r} must match the file name")
    return config


@dataclass
class _Entry:
    mtime_ns: int
    config: TenantConfig


class TenantRegistry:
    """Tenant configurations from a folder, re-read when a file changes."""

    def __init__(self, folder: Path, *, defaults_from: Path | None = None) -> None:
        """`defaults_from`: the data folder whose adapter store `get_or_default` looks in for a
        tenant without a file (unset: such a tenant is not configured)."""
        self.folder = folder
        self.defaults_from = defaults_from
        self._entries: dict[str, _Entry] = {}

    def runs_on_defaults(self, tenant_id: str) -> bool:
        return self.defaults_from is not None and not (self.folder / f"{tenant_id}.yaml").exists()

    def get_or_default(self, tenant_id: str) -> TenantConfig | None:
        """The tenant's configuration, or (with `defaults_from`) the defaults of `default_tenant`:
        one specialist, on the company adapter when one is published."""
        config = self.get(tenant_id)
        if config is not None or not self.runs_on_defaults(tenant_id):
            return config
        from loraswarm.shared.adapter_store import AdapterStore

        assert self.defaults_from is not None
        published = AdapterStore.under(self.defaults_from).current(tenant_id, "company") is not None
        return default_tenant(tenant_id, company_adapter=published)

    def get(self, tenant_id: str) -> TenantConfig | None:
        path = self.folder / f"{tenant_id}.yaml"
        try:
            mtime = path.stat().st_mtime_ns
        except FileNotFoundError:
            self._entries.pop(tenant_id, None)
            return None
        entry = self._entries.get(tenant_id)
        if entry is None or entry.mtime_ns != mtime:
            try:
                self._entries[tenant_id] = _Entry(mtime, load_tenant_file(path))
                if entry is not None:
                    log.info("reloaded tenant configuration %s", path)
            except TenantConfigError as exc:
                if entry is None:
                    raise
                log.error("keeping the previous configuration of %s: %s", tenant_id, exc)
                entry.mtime_ns = mtime  # do not re-parse the broken file on every request
                return entry.config
        return self._entries[tenant_id].config

    def all(self) -> list[TenantConfig]:
        found = []
        for path in sorted(self.folder.glob("*.yaml")):
            config = self.get(path.stem)
            if config is not None:
                found.append(config)
        return found

    def by_slack_team(self, team_id: str) -> TenantConfig | None:
        return next((t for t in self.all() if team_id in t.slack_team_ids), None)


# ---------------------------------------------------------------- defaults and new tenants

DEFAULT_SPECIALIST = "assistant"


def defaults_note(tenant_id: str) -> str:
    return (
        f"tenant {tenant_id!r} has no configuration file and runs on defaults (one general specialist); "
        f"`loraswarm tenants create {tenant_id}` writes one to adjust"
    )


def default_tenant(tenant_id: str, *, company_adapter: bool) -> TenantConfig:
    """What a tenant without a configuration file runs on: one specialist over all its documents,
    on its company adapter when one is published (the base model otherwise)."""
    return TenantConfig(
        tenant_id=tenant_id,
        specialists=[
            SpecialistConfig(
                name=DEFAULT_SPECIALIST,
                description="Answers from the company's documents.",
                instructions="You are the company's assistant. Answer from the documents only and cite them.",
                adapter="company" if company_adapter else "none",
            )
        ],
    )


def starter_tenant(tenant_id: str, display_name: str = "", description: str = "") -> TenantConfig:
    """A working configuration for a new tenant (`loraswarm tenants create`): a specialist for the
    company's documents on its company adapter, and one that answers in each user's own way on
    the user's adapter; the planner picks between them by their descriptions."""
    name = display_name or tenant_id.replace("-", " ").replace("_", " ").title()
    about = f" About {name}: {description.strip().rstrip('.')}." if description.strip() else ""
    return TenantConfig(
        tenant_id=tenant_id,
        display_name=name,
        specialists=[
            SpecialistConfig(
                name="knowledge",
                description=f"{name}'s documents: policies, processes, products and facts.{about}",
                instructions=f"You are {name}'s knowledge expert.{about} Answer from the documents only "
                "and cite them; say so when they do not answer the question.",
                adapter="company",
                handoffs=["colleague"],
            ),
            SpecialistConfig(
                name="colleague",
                description=f"How {name} works day to day, and each colleague's own way of working.",
                instructions=f"You are an experienced colleague at {name}. Be practical and brief.",
                adapter="user",
            ),
        ],
        default_plan=[PlanStep(specialist="knowledge")],
    )


def write_tenant_file(folder: Path, config: TenantConfig) -> Path:
    """Write `<folder>/<tenant_id>.yaml` (atomically: the registry never reads half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{config.tenant_id}.yaml"
    data = config.model_dump(mode="json", exclude_defaults=True)
    data = {"tenant_id": config.tenant_id, **data}  # tenant_id first, as in the examples
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(
        "# Tenant configuration (see shared/tenants.py).\n" + yaml.safe_dump(data, sort_keys=False, width=100)
    )
    tmp.replace(path)
    load_tenant_file(path)  # the file as written validates (tenant_id matches the name)
    return path
