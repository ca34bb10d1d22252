"""Settings every whole-flow test shares.

These tests train adapters for 3–6 steps so that a flow runs in seconds; that is too little for
an adapter to recall its own scope's canaries, so the leakage gate's power check (on by default)
would refuse every one of them and the flows would run on the base model. The check itself, and
the gate refusing a real leak, are tested with enough training in tests/trainer/test_leakage_gate.py.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _short_training_is_not_judged_on_recall(monkeypatch: pytest.MonkeyPatch) -> None:
    # An environment variable, so the CLI subprocesses these tests start (demo, the five
    # commands) see it too.
    monkeypatch.setenv("LORASWARM_TRAINER__REQUIRE_DETECTABLE_OWNER", "false")
