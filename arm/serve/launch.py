"""Starting `bentoml serve` for the ARM service: the command line, and a managed subprocess
(free port on 127.0.0.1, wait until ready, stop the whole process group) for tests and the
load test.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

SERVICE = "services.service:ArmService"


def serve_command(target: str = SERVICE, host: str = "127.0.0.1", port: int = 3000, extra: list[str] | None = None) -> list[str]:
    """`bentoml serve` for a service import path or a bento tag."""
    return [sys.executable, "-m", "bentoml", "serve", target, "--host", host, "--port", str(port), *(extra or [])]


def serve_env(*, model_tag: str | None = None, preset: str | None = None, overrides: list[str] | None = None,
              base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment that configures the service process (see arm.serve.settings)."""
    env = dict(os.environ if base is None else base)
    parts = [p for p in env.get("ARM_SET", "").split(";") if p.strip()]
    if model_tag:
        parts.append(f"serve.model_tag={model_tag}")
    parts += list(overrides or [])
    if parts:
        env["ARM_SET"] = ";".join(parts)
    if preset:
        env["ARM_PRESET"] = preset
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerProcess:
    """`bentoml serve` in its own process group; `with ServerProcess(...) as srv: srv.url`."""

    def __init__(self, cwd: str | Path, env: dict[str, str], *, target: str = SERVICE, host: str = "127.0.0.1",
                 port: int | None = None, log_path: str | Path | None = None, ready_timeout_s: float = 180):
        self.cwd = Path(cwd)
        self.env = env
        self.target = target
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self.ready_timeout_s = ready_timeout_s
        self.proc: subprocess.Popen | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerProcess":
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "wb")
            out = self._log
        self.proc = subprocess.Popen(
            serve_command(self.target, self.host, self.port), cwd=self.cwd, env=self.env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {self.proc.returncode}; log: {self.log_tail()}")
            try:
                # /readyz is ready only when the model process is; /healthz then asks the model itself
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200 and \
                        httpx.get(f"{self.url}/healthz", timeout=10).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"bentoml serve not ready after {self.ready_timeout_s}s; log: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")

    def stop(self, grace_s: float = 5) -> None:
        """SIGTERM, then SIGKILL after `grace_s`: BentoML 1.4's entry worker can idle ~50 s in its
        shutdown after the model worker has exited, and nothing is left to flush by then.

        Circus starts each worker in its own session, so the workers are found as descendants
        (before the arbiter goes and they are re-parented), not by process group.
        """
        import psutil

        if self.proc is None or self.proc.poll() is not None:
            self._close_log()
            return
        try:
            procs = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=grace_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=10)
        self.proc.wait(timeout=10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
