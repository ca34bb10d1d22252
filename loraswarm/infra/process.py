"""Starting, finding and stopping the background processes of the local infrastructure."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class InfraError(Exception):
    """Something the user must fix; the message says what, in one sentence."""


def require_tool(name: str, what_for: str, install_hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise InfraError(f"`{name}` was not found on PATH; it is needed {what_for}: {install_hint}.")
    return path


@dataclass(frozen=True)
class ManagedProcess:
    """A background process known by its pid file and log file."""

    name: str
    run_dir: Path
    logs_dir: Path

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.logs_dir / f"{self.name}.log"

    def pid(self) -> int | None:
        """The pid of the running service, or None (also when the pid was reused by another program)."""
        try:
            pid_text, _, marker = self.pid_file.read_text().partition("\n")
            pid = int(pid_text.strip())
        except (FileNotFoundError, ValueError):
            return None
        if not _alive(pid):
            return None
        # After a reboot or a new CI run the old pid may belong to something else entirely.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return pid
        return pid if marker.strip() and marker.strip() in cmdline else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen[bytes]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        full_env = {**os.environ, **(env or {})}
        with self.log_file.open("ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
            log.flush()
            # A new session: the service outlives the CLI that started it, and `down` can stop
            # its whole process group.
            proc = subprocess.Popen(
                list(argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
            )
        # The second line identifies the process, so a reused pid is not mistaken for ours.
        self.pid_file.write_text(f"{proc.pid}\n{Path(argv[0]).name}\n")
        return proc

    def stop(self, timeout_s: float = 20.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        return True

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); reap it if it is our child.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    *,
    timeout_s: float,
    proc: ManagedProcess,
    child: subprocess.Popen[bytes],
    what: str,
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if child.poll() is not None:
            raise InfraError(
                f"{what} exited while starting; its log ({proc.log_file}) ends with:\n{proc.log_tail()}"
            )
        time.sleep(0.25)
    raise InfraError(f"{what} was not ready after {timeout_s:.0f} s; see {proc.log_file}:\n{proc.log_tail()}")


def ensure_port_free(port: int, what: str) -> None:
    if port_open(port):
        raise InfraError(
            f"port {port} for {what} is already in use by another program; stop it or choose "
            "another port in the LORASWARM_INFRA__* settings."
        )


def run_build(
    argv: Sequence[str],
    *,
    log: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str,
) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        result = subprocess.run(
            list(argv),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            check=False,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise InfraError(f"{what} failed (exit {result.returncode}); see {log}:\n{tail}")
