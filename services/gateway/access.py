"""Who may use the gateway for which tenant, and where a tenant's answers are delivered.

The gateway's secrets live apart from the tenant configuration that the planner reads
(`shared/tenants.py`, which holds the Slack workspace -> tenant mapping): one YAML file
(`LORASWARM_GATEWAY__ACCESS_FILE`, default `<data_dir>/gateway/access.yaml`), re-read when it
changes, so keys and webhook secrets rotate without a restart:

```yaml
tenants:
  acme:
    api_keys:                      # only sha256 hashes (hex) of the keys are kept
      - name: backend              # a tenant-wide service key
        sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
      - name: alice-laptop         # a key bound to one user: it acts as alice, only
        sha256: 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
        user_id: alice
    service_keys_act_for_users: false   # may a service key name any user_id? (default: no)
    jwt:                           # signed user assertions from the tenant's identity provider
      issuer: https://login.acme.example/
      audience: loraswarm
      keys: ["-----BEGIN PUBLIC KEY-----..."]   # PEM public keys (RS256/ES256) or HS256 secrets
      algorithms: [RS256]
      user_claim: sub
    slack_bot_token: xoxb-...      # optional: answers to @mentions (chat.postMessage)
    rate_limit: {per_s: 5, burst: 10}
    webhooks:
      - url: https://hooks.acme.example/loraswarm
        secrets: [whsec_new..., whsec_old...]   # every secret signs: rotate by adding, then removing
```

Who a request acts for (`authenticate`): a user-bound key or a verified JWT is that user, and
nobody else; a tenant-wide service key acts for the company, and for a user it names only where
the tenant sets `service_keys_act_for_users`.

API keys are random 256-bit tokens, so one unsalted sha256 is enough to make a leaked file
useless (a slow password hash protects guessable secrets, which these are not).
`python -m loraswarm.services.gateway.access add-key <tenant> [name]` adds a key and prints it once.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from loraswarm.shared.envelope import TenantId
from loraswarm.shared.settings import Settings

log = logging.getLogger("loraswarm.gateway.access")

KEY_PREFIX = "lsk_"


class AccessFileError(ValueError):
    """The access file cannot be used as it is; the message names the entry to fix."""


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(_Config):
    name: str = Field(default="", description="What the key is for, to find it when rotating.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="Hex sha256 of the key.")
    user_id: str | None = Field(
        default=None,
        description="The one user of the tenant this key acts as; unset = a tenant-wide service key.",
    )


class JwtIssuer(_Config):
    issuer: str = Field(min_length=1, description="The `iss` the tenant's identity provider signs with.")
    audience: str = Field(min_length=1, description="The `aud` tokens must be issued for.")
    keys: list[str] = Field(min_length=1, description="PEM public keys, or shared secrets for HS256.")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    user_claim: str = Field(default="sub", description="The claim that holds the tenant's user id.")


class RateLimit(_Config):
    per_s: float = Field(gt=0, description="Requests per second.")
    burst: int = Field(ge=1, description="Requests at once above the rate.")


WebhookEvent = Literal["recommendation.completed", "recommendation.failed"]


def _all_outcomes() -> list[WebhookEvent]:
    return ["recommendation.completed", "recommendation.failed"]


class WebhookEndpoint(_Config):
    url: str = Field(pattern=r"^https?://", description="Where completed and failed requests are POSTed.")
    secrets: list[str] = Field(min_length=1, description="`whsec_` secrets; each one signs every message.")
    events: list[WebhookEvent] = Field(
        default_factory=_all_outcomes,
        description="Which outcomes this endpoint receives.",
    )

    @field_validator("secrets")
    @classmethod
    def _secrets_are_whsec(cls, values: list[str]) -> list[str]:
        for value in values:
            secret_bytes(value)
        return values


class TenantAccess(_Config):
    api_keys: list[ApiKey] = Field(default_factory=list)
    slack_bot_token: SecretStr | None = None
    rate_limit: RateLimit | None = None
    webhooks: list[WebhookEndpoint] = Field(default_factory=list)
    service_keys_act_for_users: bool = Field(
        default=False,
        description="Whether a tenant-wide service key may name any user_id (a backend that has "
        "authenticated its users itself); otherwise it acts for the company only.",
    )
    jwt: JwtIssuer | None = None


class AccessFile(_Config):
    tenants: dict[TenantId, TenantAccess] = Field(default_factory=dict)


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (Standard Webhooks: 24 to 64 random bytes)."""
    if not secret.startswith("whsec_"):
        raise ValueError("a webhook secret must look like whsec_<base64 of 24-64 random bytes>")
    try:
        raw = base64.b64decode(secret.removeprefix("whsec_"), validate=True)
    except ValueError as exc:
        raise ValueError(f"webhook secret is not valid base64 after whsec_: {exc}") from exc
    if not 24 <= len(raw) <= 64:
        raise ValueError(f"a webhook secret must decode to 24-64 bytes, this one has {len(raw)}")
    return raw


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def new_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_access(text: str, *, source: str = "access file") -> AccessFile:
    try:
        data = yaml.safe_load(text) or {}
        parsed = AccessFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise AccessFileError(f"{source}: not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise AccessFileError(f"{source}: {exc}") from exc
    _check_unique(parsed, source)
    return parsed


def _check_unique(parsed: AccessFile, source: str) -> None:
    keys: dict[str, str] = {}
    for tenant, config in parsed.tenants.items():
        for key in config.api_keys:
            if keys.setdefault(key.sha256, tenant) != tenant:
                raise AccessFileError(
                    f"{source}: one API key hash is listed for {keys[key.sha256]} and {tenant}"
                )


class AccessDirectory:
    """The access file, indexed for lookups, re-read when its modification time or size changes.

    A file that turns invalid while running keeps the last good version in force (and says so in
    the log): a typo must not lock every tenant out.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._config = AccessFile()
        self._by_key: dict[str, str] = {}
        self.refresh(strict=True)

    def refresh(self, *, strict: bool = False) -> None:
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            if self._stamp is not None or strict:
                log.warning("no access file at %s: every API key is refused", self.path)
            self._apply(AccessFile(), None)
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        try:
            parsed = parse_access(self.path.read_text(), source=str(self.path))
        except AccessFileError:
            if strict:
                raise
            log.exception("keeping the previous access rules: the changed file is invalid")
            self._stamp = stamp
            return
        self._apply(parsed, stamp)

    def _apply(self, parsed: AccessFile, stamp: tuple[int, int] | None) -> None:
        self._config = parsed
        self._stamp = stamp
        self._by_key = {k.sha256: t for t, c in parsed.tenants.items() for k in c.api_keys}
        self._keys = {k.sha256: k for c in parsed.tenants.values() for k in c.api_keys}

    def tenant_for_key(self, key: str) -> str | None:
        self.refresh()
        return self._by_key.get(hash_api_key(key))

    def key(self, key: str) -> tuple[str, ApiKey] | None:
        """(tenant, key entry) of an API key, or None."""
        self.refresh()
        digest = hash_api_key(key)
        tenant = self._by_key.get(digest)
        return (tenant, self._keys[digest]) if tenant is not None else None

    def issuers(self, issuer: str) -> list[tuple[str, JwtIssuer]]:
        """The tenants whose identity provider signs as `issuer`."""
        self.refresh()
        return [(t, c.jwt) for t, c in self._config.tenants.items() if c.jwt and c.jwt.issuer == issuer]

    def get(self, tenant: str) -> TenantAccess | None:
        self.refresh()
        return self._config.tenants.get(tenant)


class Unauthorized(Exception):
    """401: who the caller is is unknown."""


class Forbidden(Exception):
    """403: the caller is known, and may not do this."""


@dataclass(frozen=True)
class Caller:
    """Who a request comes from, as the gateway has verified it."""

    tenant_id: str
    user_id: str | None  # the user it *is* (user key, JWT); None for a service key
    via: Literal["user_key", "service_key", "jwt"]
    acts_for_users: bool = False  # a service key of a tenant that lets it name users

    def acting_for(self, requested: str | None) -> str | None:
        """The user a request runs as, when it names `requested` (None: the caller's own scope)."""
        if self.user_id is not None:
            if requested not in (None, self.user_id):
                raise Forbidden(
                    f"this credential acts as user {self.user_id!r}; it cannot ask as {requested!r}"
                )
            return self.user_id
        if requested is not None and not self.acts_for_users:
            raise Forbidden(
                "a tenant-wide service key may not name a user_id unless the tenant allows it "
                "(`service_keys_act_for_users` in the access file); use a user's key or a signed "
                "user assertion (JWT) instead"
            )
        return requested

    def may_read(self, owner: str | None) -> bool:
        """Whether the caller may see a request made as `owner`."""
        if self.user_id is not None:
            return owner == self.user_id
        return owner is None or self.acts_for_users


def authenticate(access: AccessDirectory, token: str) -> Caller:
    """The caller a bearer token or API key stands for, or `Unauthorized`."""
    if token.count(".") == 2 and not token.startswith(KEY_PREFIX):
        return _from_jwt(access, token)
    found = access.key(token)
    if found is None:
        raise Unauthorized("unknown API key")
    tenant, key = found
    if key.user_id is not None:
        return Caller(tenant, key.user_id, "user_key")
    rules = access.get(tenant)
    return Caller(tenant, None, "service_key", bool(rules and rules.service_keys_act_for_users))


def _from_jwt(access: AccessDirectory, token: str) -> Caller:
    import jwt

    try:
        issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
    except jwt.PyJWTError as exc:
        raise Unauthorized(f"not a valid JWT: {exc}") from exc
    candidates = access.issuers(str(issuer)) if issuer else []
    if not candidates:
        raise Unauthorized("the JWT's issuer is not configured for any tenant")
    problem = "no configured key verifies it"
    for tenant, rules in candidates:
        for key in rules.keys:
            try:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=rules.algorithms,
                    audience=rules.audience,
                    issuer=rules.issuer,
                    options={"require": ["exp", "iss", "aud"]},
                )
            except jwt.PyJWTError as exc:
                problem = str(exc)
                continue
            user = claims.get(rules.user_claim)
            if not isinstance(user, str) or not user:
                raise Unauthorized(f"the JWT has no {rules.user_claim!r} claim naming the user")
            return Caller(tenant, user, "jwt")
    raise Unauthorized(f"the JWT is not valid: {problem}")


def access_file(settings: Settings) -> Path:
    return settings.gateway.access_file or settings.data_dir / "gateway" / "access.yaml"


def add_api_key(path: Path, tenant: str, name: str = "", user_id: str | None = None) -> str:
    """Add a new key for `tenant` (bound to `user_id` if given) to the access file (created if
    missing); the key is returned once."""
    data = yaml.safe_load(path.read_text()) if path.exists() else None
    data = data or {}
    entry = data.setdefault("tenants", {}).setdefault(tenant, {}) or {}
    data["tenants"][tenant] = entry
    key = new_api_key()
    record: dict[str, str] = {"name": name, "sha256": hash_api_key(key)}
    if user_id is not None:
        record["user_id"] = user_id
    entry.setdefault("api_keys", []).append(record)
    _write_access(path, data)
    return key


def _write_access(path: Path, data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, sort_keys=False)
    parse_access(text, source=str(path))  # never write a file the gateway would refuse
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)  # the gateway re-reads the file: never half of it


def revoke_api_keys(path: Path, tenant: str, name: str) -> int:
    """Remove `tenant`'s keys named `name` from the access file; how many were removed."""
    data = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    entry = (data.get("tenants") or {}).get(tenant) or {}
    keys = entry.get("api_keys") or []
    kept = [k for k in keys if k.get("name") != name]
    if len(kept) == len(keys):
        return 0
    entry["api_keys"] = kept
    _write_access(path, data)
    return len(keys) - len(kept)


def remove_tenant(path: Path, tenant: str) -> bool:
    """Remove everything the access file holds for `tenant` (keys, webhooks, Slack token)."""
    data = (yaml.safe_load(path.read_text()) if path.exists() else None) or {}
    if tenant not in (data.get("tenants") or {}):
        return False
    del data["tenants"][tenant]
    _write_access(path, data)
    return True


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] != "add-key":
        print("usage: python -m loraswarm.services.gateway.access add-key <tenant> [name]", file=sys.stderr)
        return 2
    settings = Settings()
    path = access_file(settings)
    key = add_api_key(path, argv[1], argv[2] if len(argv) > 2 else "")
    print(f"added a key for {argv[1]} to {path}; it is shown only now:\n{key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
