"""`loraswarm tenants ...` run as a user runs it: the files it writes are the ones the services read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from loraswarm.services.gateway.access import AccessDirectory
from loraswarm.shared.tenants import TenantRegistry

CLI = [sys.executable, "-m", "loraswarm.cli"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_tenants_create_keys_users_and_delete(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "LORASWARM_DATA_DIR": str(tmp_path / "data"),
        "LORASWARM_ORCHESTRATION__TENANTS_DIR": str(tmp_path / "tenants"),
        "COLUMNS": "200",
    }
    created = run(env, "tenants", "create", "northwind", "--description", "Ships kitchen equipment")
    assert created.returncode == 0, created.stdout + created.stderr
    config = TenantRegistry(tmp_path / "tenants").get("northwind")
    assert config is not None and [s.name for s in config.specialists] == ["knowledge", "colleague"]
    assert "Ships kitchen equipment" in config.specialists[0].description
    assert run(env, "tenants", "create", "northwind").returncode == 1  # never overwritten by accident
    bad = run(env, "tenants", "create", "No Spaces")
    assert bad.returncode == 1 and "tenant_id must be" in bad.stdout

    assert run(env, "tenants", "add-user", "northwind", "ana").returncode == 0
    assert TenantRegistry(tmp_path / "tenants").get("northwind").users == ["ana"]  # type: ignore[union-attr]
    made = run(env, "tenants", "keys", "create", "northwind", "--name", "ana", "--user", "ana")
    assert made.returncode == 0, made.stdout + made.stderr
    key = made.stdout.strip().splitlines()[-1]
    access = AccessDirectory(tmp_path / "data" / "gateway" / "access.yaml")
    assert access.tenant_for_key(key) == "northwind"
    entry = access.get("northwind")
    assert entry is not None and entry.api_keys[0].user_id == "ana" and key not in str(entry)

    listed = run(env, "tenants", "list")
    assert listed.stdout.split() == ["northwind", "configured", "1", "keys,", "0", "adapters"]
    shown = run(env, "tenants", "show", "northwind")
    assert "ana (user ana)" in shown.stdout and key not in shown.stdout

    assert run(env, "tenants", "keys", "revoke", "northwind", "ana").returncode == 0
    assert access.tenant_for_key(key) is None
    deleted = run(env, "tenants", "delete", "northwind", "--yes", "--keep-documents")
    assert deleted.returncode == 0 and "configuration" in deleted.stdout
    assert not (tmp_path / "tenants" / "northwind.yaml").exists()
    assert run(env, "tenants", "show", "northwind").returncode == 1
