"""Fixtures of the deployment tests: the settings environment, clean of the caller's LORASWARM_*."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from loraswarm.shared.settings import Settings


@pytest.fixture
def settings_from() -> Callable[[dict[str, str]], Settings]:
    """Build `Settings` from exactly these LORASWARM_* variables, as a container would."""

    def build(env: dict[str, str]) -> Settings:
        with pytest.MonkeyPatch.context() as patch:
            for key in [k for k in os.environ if k.upper().startswith("LORASWARM_")]:
                patch.delenv(key)
            for key, value in env.items():
                patch.setenv(key, value)
            return Settings()

    return build
