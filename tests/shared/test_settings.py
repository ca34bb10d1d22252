"""Settings come from LORASWARM_* variables and every one of them is described."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, SecretStr

from loraswarm.shared.settings import Settings


def test_nested_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWARM_BROKER", "memory")
    monkeypatch.setenv("LORASWARM_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("LORASWARM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("LORASWARM_INFRA__KAFKA_PORT", "19092")
    settings = Settings()
    assert settings.broker == "memory"
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.infra.kafka_port == 19092


def test_a_bad_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORASWARM_BROKER", "rabbitmq")
    with pytest.raises(ValueError, match="broker"):
        Settings()


def _undescribed(model: type[BaseModel], prefix: str) -> list[str]:
    missing = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _undescribed(annotation, f"{prefix}{name}__")
        elif not field.description:
            missing.append(prefix + name)
    return missing


def test_every_setting_has_a_description() -> None:
    assert _undescribed(Settings, "") == []


def test_sasl_without_credentials_is_refused() -> None:
    from loraswarm.shared.kafka_client import kafka_security

    settings = Settings()
    settings.kafka.security_protocol = "SASL_PLAINTEXT"
    with pytest.raises(ValueError, match="SASL_USERNAME"):
        kafka_security(settings.kafka)
    settings.kafka.sasl_mechanism = "SCRAM-SHA-512"
    settings.kafka.sasl_username = "svc"
    settings.kafka.sasl_password = SecretStr("secret")
    security = kafka_security(settings.kafka)
    assert type(security).__name__ == "SASLScram512"
