"""Start `python3 -m triage.serve` on a free loopback port (tests, the load test); stop it (TERM or kill -9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from triage.client import Client, TriageError

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A service process; .client talks to it."""

    def __init__(self, db: str, *extra: str, token: str | None = None):
        self.port = free_port()
        self.args = [sys.executable, "-m", "triage.serve", "--port", str(self.port), "--db", db, *extra]
        if token:
            self.args += ["--token", token]
        self.client = Client(f"http://127.0.0.1:{self.port}", token=token, timeout=30)
        self.proc = None

    def start(self) -> "Server":
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stdout.read().decode()[-2000:]}")
            try:
                self.client.health()
                return self
            except TriageError:
                time.sleep(0.1)
        raise RuntimeError("server did not come up in 60 s")

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()
