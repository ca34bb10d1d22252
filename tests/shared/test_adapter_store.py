"""The adapter store: versions, atomic publish, rollback, tenant deletion, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from loraswarm.shared.adapter_store import (
    AdapterError,
    AdapterManifest,
    AdapterNotFound,
    AdapterStore,
    InvalidAdapter,
    parse_adapter_id,
)


def fake_adapter(folder: Path, payload: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(payload)
    (folder / "adapter_config.json").write_text('{"r": 8}')
    return folder


def manifest(tenant: str = "acme", name: str = "company") -> AdapterManifest:
    return AdapterManifest(tenant_id=tenant, name=name, base_model="SmolLM2-135M-Instruct")


def test_publish_versions_and_resolve(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "adapters")
    v1 = store.publish(fake_adapter(tmp_path / "a", b"one"), manifest())
    v2 = store.publish(fake_adapter(tmp_path / "b", b"two"), manifest())
    assert (v1.ref.version, v2.ref.version) == ("1", "2")
    assert store.resolve("acme/company").ref.version == "2"
    assert (store.resolve("acme/company@1").path / "adapter_model.safetensors").read_bytes() == b"one"
    assert store.resolve("acme/company").manifest.version == "2"
    assert [a.ref.id for a in store.list("acme")] == ["acme/company@2"]


def test_rollback_is_one_call(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.publish(fake_adapter(tmp_path / "a", b"one"), manifest())
    store.publish(fake_adapter(tmp_path / "b", b"two"), manifest())
    assert store.rollback("acme", "company") == "1"
    assert store.resolve("acme/company").ref.version == "1"
    with pytest.raises(AdapterError, match="oldest version"):
        store.rollback("acme", "company")


def test_unknown_and_malformed_ids_are_not_found(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    with pytest.raises(AdapterNotFound, match="does not exist"):
        store.resolve("acme/nope")
    store.publish(fake_adapter(tmp_path / "a", b"one"), manifest())
    with pytest.raises(AdapterNotFound, match="no version 7"):
        store.resolve("acme/company@7")
    with pytest.raises(AdapterNotFound, match="not an adapter id"):
        parse_adapter_id("../../etc/passwd")


def test_an_incomplete_adapter_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with pytest.raises(InvalidAdapter, match=r"adapter_model\.safetensors"):
        AdapterStore(tmp_path / "s").publish(folder, manifest())


def test_deleting_a_tenant_removes_its_adapters_only(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path)
    store.publish(fake_adapter(tmp_path / "a", b"one"), manifest("acme"))
    store.publish(fake_adapter(tmp_path / "b", b"two"), manifest("globex"))
    assert store.delete_tenant("acme")
    assert [a.ref.tenant_id for a in store.list()] == ["globex"]
