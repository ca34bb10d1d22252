"""Why a training job ends without a published adapter.

Every refusal is a `Rejected` with a machine-readable `code` (the `code` of `adapter.rejected`),
a reason a person can act on, and the numbers measured so far::

    Rejected                      the job ends with `adapter.rejected`; nothing is published
    ├── InvalidRequest            invalid_request: unknown or out-of-range hyper-parameters, bad names
    ├── UnknownTenant             unknown_tenant: no ingested documents and no data store
    ├── WrongBaseModel            wrong_base_model: the request names another base model
    ├── ScopeViolation            scope_violation: the request names data outside its scope
    ├── EmptyDataset              empty_dataset: nothing in scope to train on
    ├── TinyDataset               tiny_dataset: too few tokens to train and hold some out
    ├── CorruptData               corrupt_data: an examples file with bad lines (numbers named)
    ├── AlreadyTraining           already_training: the same adapter is being trained now
    ├── NonFiniteLoss             nan_loss: the loss became NaN or infinite
    ├── QualityRegression         quality_regression: held-out loss rose over the starting model
    ├── LeakageDetected           leakage: a canary is exposed where it must not be
    ├── LeakageUnmeasurable       leakage_unmeasurable: the adapter's own canaries are not exposed,
    │                             so the measurement could not have seen a leak
    └── Unavailable               unavailable: a part the job needs cannot be reached
"""

from __future__ import annotations

from typing import ClassVar

from loraswarm.shared.events import RejectionCode

Code = RejectionCode  # the one list, beside the event that carries it


# Verdicts on the trained adapter itself. The same request on the same data comes to them again,
# so they are kept (`AdapterStore.record_refusal`) and not trained for a second time; every other
# refusal depends on the moment (a tenant not yet configured, an adapter being trained, a part
# unreachable) and a retry may succeed.
VERDICTS: frozenset[Code] = frozenset({"nan_loss", "quality_regression", "leakage", "leakage_unmeasurable"})


class Rejected(Exception):
    code: ClassVar[Code] = "internal"

    def __init__(self, reason: str, metrics: dict[str, float] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.metrics = dict(metrics or {})


class InvalidRequest(Rejected):
    code = "invalid_request"


class UnknownTenant(Rejected):
    code = "unknown_tenant"


class WrongBaseModel(Rejected):
    code = "wrong_base_model"


class ScopeViolation(Rejected):
    code = "scope_violation"


class EmptyDataset(Rejected):
    code = "empty_dataset"


class TinyDataset(Rejected):
    code = "tiny_dataset"


class CorruptData(Rejected):
    code = "corrupt_data"


class AlreadyTraining(Rejected):
    code = "already_training"


class NonFiniteLoss(Rejected):
    code = "nan_loss"


class QualityRegression(Rejected):
    code = "quality_regression"


class LeakageDetected(Rejected):
    code = "leakage"


class Unavailable(Rejected):
    code = "unavailable"


class LeakageUnmeasurable(Rejected):
    code = "leakage_unmeasurable"
