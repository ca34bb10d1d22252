"""The ids every part passes around, written once: tenant ids and adapter references.

A tenant id is also a Kafka message key, a Weaviate tenant and a folder name, hence its narrow
alphabet. An adapter is `<tenant>/<name>[@<version>]`; versions are the integers the adapter store
numbers them with (`@3`), so `@v1.2` is refused everywhere — by event validation as by the store —
instead of passing one and failing the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated

from pydantic import AfterValidator, Field

TENANT_ID = r"[a-z0-9][a-z0-9_-]{0,62}"
ADAPTER_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
ADAPTER_VERSION = r"[0-9]+"
ADAPTER_ID = rf"^{TENANT_ID}/{ADAPTER_NAME}(@{ADAPTER_VERSION})?$"

_TENANT_ID = re.compile(rf"^{TENANT_ID}$")
# The name is lazy so that a version, when present, is never swallowed by it.
_ADAPTER = re.compile(
    rf"^(?P<tenant>{TENANT_ID})/(?P<name>{ADAPTER_NAME}?)(@(?P<version>{ADAPTER_VERSION}))?$"
)


# Tenant ids already matched: every event names one, twice per hop (built, then read), and a
# process sees few tenants; a set lookup is a fraction of the regular expression's match.
_VALID_TENANT_IDS: set[str] = set()
_REMEMBERED_TENANT_IDS = 4096


def is_tenant_id(value: str) -> bool:
    if value in _VALID_TENANT_IDS:
        return True
    if _TENANT_ID.match(value) is None:
        return False
    if len(_VALID_TENANT_IDS) < _REMEMBERED_TENANT_IDS:
        _VALID_TENANT_IDS.add(value)
    return True


def check_tenant_id(value: str) -> str:
    if not is_tenant_id(value):
        raise ValueError(
            "tenant_id must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter "
            f"or digit (got {value!r})"
        )
    return value


TenantId = Annotated[
    str,
    AfterValidator(check_tenant_id),
    Field(description="The company this event belongs to; also the Kafka message key."),
]


@dataclass(frozen=True)
class AdapterRef:
    """`<tenant>/<name>[@<version>]`, parsed; `version` None means "the current one"."""

    tenant_id: str
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> AdapterRef:
        """Raises ValueError naming the expected form."""
        match = _ADAPTER.match(text)
        if match is None:
            raise ValueError(
                f"{text!r} is not an adapter id; expected `<tenant>/<name>` or `<tenant>/<name>@<version>` "
                "(the version a number, e.g. acme/company@3)"
            )
        return cls(match["tenant"], match["name"], match["version"])

    @property
    def id(self) -> str:
        return self.format()

    def format(self) -> str:
        return f"{self.tenant_id}/{self.name}" + (f"@{self.version}" if self.version else "")

    @property
    def unversioned(self) -> str:
        return f"{self.tenant_id}/{self.name}"

    def at(self, version: str | int | None) -> AdapterRef:
        return AdapterRef(self.tenant_id, self.name, None if version is None else str(version))

    def __str__(self) -> str:
        return self.format()
