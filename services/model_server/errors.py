"""Errors the model server answers with: TGI's body `{"error", "error_type"}` and TGI's status codes.

    ServingError                      any answer that is not a generation
    ├── ValidationFailed      422     validation        (TGI: "Input validation error: ...")
    ├── Overloaded            429     overloaded        (TGI: "Model is overloaded")
    ├── GenerationFailed      424     generation        (TGI: "Request failed during generation: ...")
    ├── IncompleteGeneration  500     incomplete_generation
    ├── Unhealthy             503     healthcheck
    ├── Unauthorized          401     unauthorized      (no or unknown API key)
    ├── AdapterForbidden      403     adapter_forbidden (another tenant's adapter, or no tenant)
    ├── AdapterMissing        404     adapter_not_found (TGI would silently use the base model)
    └── AdapterUnusable       422     invalid_adapter   (the stored adapter is malformed)

The last four are this server's own: TGI has neither tenants nor run-time adapters.
"""

from __future__ import annotations

from typing import ClassVar


class ServingError(Exception):
    status: ClassVar[int] = 500
    error_type: ClassVar[str] = "generation"

    def body(self) -> dict[str, str]:
        return {"error": str(self), "error_type": self.error_type}


class ValidationFailed(ServingError):
    status = 422
    error_type = "validation"

    def __init__(self, reason: str) -> None:
        super().__init__(f"Input validation error: {reason}")
        self.reason = reason


class Overloaded(ServingError):
    status = 429
    error_type = "overloaded"

    def __init__(self) -> None:
        super().__init__("Model is overloaded")


class GenerationFailed(ServingError):
    status = 424
    error_type = "generation"


class IncompleteGeneration(ServingError):
    status = 500
    error_type = "incomplete_generation"

    def __init__(self) -> None:
        super().__init__("Incomplete generation")


class Unhealthy(ServingError):
    status = 503
    error_type = "healthcheck"

    def __init__(self) -> None:
        super().__init__("unhealthy")


class Unauthorized(ServingError):
    status = 401
    error_type = "unauthorized"


class AdapterForbidden(ServingError):
    status = 403
    error_type = "adapter_forbidden"


class AdapterMissing(ServingError):
    status = 404
    error_type = "adapter_not_found"


class AdapterUnusable(ServingError):
    status = 422
    error_type = "invalid_adapter"
