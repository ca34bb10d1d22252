"""The access file: only key hashes stored, keys added from the command line, changes picked up
without a restart, a broken edit never locks tenants out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from loraswarm.services.gateway.access import (
    AccessDirectory,
    AccessFileError,
    add_api_key,
    hash_api_key,
    parse_access,
)


def touch_later(path: Path, text: str) -> None:
    """Write so that the modification time surely differs (coarse file system clocks)."""
    before = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text)
    if path.stat().st_mtime_ns == before:
        os.utime(path, ns=(time.time_ns(), before + 1_000_000))


def test_a_key_is_added_from_the_command_line_and_only_its_hash_is_kept(tmp_path: Path) -> None:
    env = {**os.environ, "LORASWARM_DATA_DIR": str(tmp_path / "data")}
    added = subprocess.run(
        [sys.executable, "-m", "loraswarm.services.gateway.access", "add-key", "acme", "ci"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip().splitlines()[-1]
    assert key.startswith("lsk_")
    path = tmp_path / "data" / "gateway" / "access.yaml"
    stored = path.read_text()
    assert key not in stored
    assert hash_api_key(key) in stored
    directory = AccessDirectory(path)
    assert directory.tenant_for_key(key) == "acme"
    assert directory.tenant_for_key(key + "x") is None


def test_changes_are_picked_up_and_a_broken_edit_keeps_the_last_good_rules(tmp_path: Path) -> None:
    path = tmp_path / "access.yaml"
    first = add_api_key(path, "acme")
    directory = AccessDirectory(path)
    assert directory.tenant_for_key(first) == "acme"
    second = add_api_key(path, "globex")
    assert directory.tenant_for_key(second) == "globex"  # no restart

    good = path.read_text()
    touch_later(path, good.replace("tenants:", "tenants: [broken"))
    assert directory.tenant_for_key(first) == "acme"  # the last good version stays in force
    data = yaml.safe_load(good)
    data["tenants"]["acme"]["api_keys"] = []
    touch_later(path, yaml.safe_dump(data))
    assert directory.tenant_for_key(first) is None  # a revoked key stops working
    assert directory.tenant_for_key(second) == "globex"


def test_an_invalid_file_is_refused_at_start_with_what_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "access.yaml"
    path.write_text("tenants:\n  Not A Tenant:\n    api_keys: []\n")
    with pytest.raises(AccessFileError, match="tenant_id"):
        AccessDirectory(path)
    same = hash_api_key("lsk_shared")
    twice = {"tenants": {"a": {"api_keys": [{"sha256": same}]}, "b": {"api_keys": [{"sha256": same}]}}}
    with pytest.raises(AccessFileError, match="one API key hash is listed for a and b"):
        parse_access(yaml.safe_dump(twice))
    assert AccessDirectory(tmp_path / "missing.yaml").tenant_for_key("lsk_any") is None
