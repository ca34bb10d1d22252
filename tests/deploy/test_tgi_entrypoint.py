"""deploy/docker/tgi-entrypoint.sh on a real adapter store: LORA_ADAPTERS as TGI parses it.

TGI itself needs a GPU and its image, neither of which is here; `text-generation-launcher` is
stood in for by a script that records what it was started with, so what is tested is ours: which
adapters the wrapper hands to TGI, in TGI's format, for an adapter store written by the real
`AdapterStore`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from loraswarm.shared.adapter_store import AdapterManifest, AdapterStore
from tests.deploy.manifests import TGI_ENTRYPOINT

pytestmark = pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")


def _tgi_lora_adapters(value: str) -> dict[str, str | None]:
    """TGI's own parsing (server/text_generation_server/utils/adapter.py, parse_lora_adapters)."""
    parsed: dict[str, str | None] = {}
    for entry in value.split(","):
        parts = entry.strip().split("=")
        if len(parts) == 1:
            parsed[parts[0]] = None
        elif len(parts) == 2:
            parsed[parts[0]] = parts[1]
        else:
            raise ValueError(f"Invalid LoRA adapter format: {entry}")
    return parsed


def _adapter(tmp_path: Path, tag: str) -> Path:
    folder = tmp_path / "saved" / tag
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "tag": tag}))
    (folder / "adapter_model.safetensors").write_bytes(b"weights of " + tag.encode())
    return folder


def _publish(store: AdapterStore, tmp_path: Path, tenant: str, name: str, tag: str) -> None:
    manifest = AdapterManifest(tenant_id=tenant, name=name, base_model="SmolLM2-135M-Instruct")
    store.publish(_adapter(tmp_path, tag), manifest)


def _start(tmp_path: Path, env: dict[str, str], *args: str) -> dict[str, object]:
    """Run the entrypoint with a stand-in launcher; what the launcher was started with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    record = tmp_path / "launched.json"
    launcher = bin_dir / "text-generation-launcher"
    launcher.write_text(
        "#!/bin/sh\n"
        f"printf '%s\\n' \"${{LORA_ADAPTERS-<unset>}}\" > {record}.env\n"
        f"printf '%s\\n' \"$@\" > {record}.args\n"
    )
    launcher.chmod(0o755)
    done = subprocess.run(
        ["sh", str(TGI_ENTRYPOINT), *args],
        env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return {
        "LORA_ADAPTERS": Path(f"{record}.env").read_text().strip(),
        "args": Path(f"{record}.args").read_text().split(),
        "stderr": done.stderr,
    }


def test_every_current_adapter_is_handed_to_tgi(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "adapters")
    _publish(store, tmp_path, "acme", "company", "acme-v1")
    _publish(store, tmp_path, "acme", "company", "acme-v2")
    _publish(store, tmp_path, "acme", "user-alice", "alice-v1")
    _publish(store, tmp_path, "globex", "company", "globex-v1")
    store.rollback("acme", "company")  # current is version 1 again

    launched = _start(
        tmp_path, {"ADAPTER_STORE": str(store.root)}, "--model-id", "/models/base", "--port", "80"
    )

    adapters = _tgi_lora_adapters(str(launched["LORA_ADAPTERS"]))
    assert set(adapters) == {"acme/company", "acme/user-alice", "globex/company"}
    for adapter_id, folder in adapters.items():
        # The folder TGI loads is the version the store itself serves for that id.
        assert folder == str(store.resolve(adapter_id).path)
    assert adapters["acme/company"] == str(store.root / "acme" / "company" / "versions" / "1")
    assert launched["args"] == ["--model-id", "/models/base", "--port", "80"]


def test_a_broken_adapter_is_skipped_with_a_reason(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "adapters")
    _publish(store, tmp_path, "acme", "company", "acme-v1")
    _publish(store, tmp_path, "acme", "broken", "broken-v1")
    (store.root / "acme" / "broken" / "current").write_text("7\n")  # no such version

    launched = _start(tmp_path, {"ADAPTER_STORE": str(store.root)})

    assert _tgi_lora_adapters(str(launched["LORA_ADAPTERS"])) == {
        "acme/company": str(store.resolve("acme/company").path)
    }
    assert "skipping acme/broken" in str(launched["stderr"])


def test_a_hand_set_list_and_an_empty_store_are_left_alone(tmp_path: Path) -> None:
    store = AdapterStore(tmp_path / "adapters")
    _publish(store, tmp_path, "acme", "company", "acme-v1")
    by_hand = "acme/company=/elsewhere/acme"
    assert (
        _start(tmp_path, {"ADAPTER_STORE": str(store.root), "LORA_ADAPTERS": by_hand})["LORA_ADAPTERS"]
        == by_hand
    )
    empty = _start(tmp_path, {"ADAPTER_STORE": str(tmp_path / "nothing-here")})
    assert empty["LORA_ADAPTERS"] == "<unset>"
