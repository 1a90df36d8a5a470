"""A throwaway PostgreSQL server for tests: initdb in a temp dir, a unix socket in that dir, no TCP.

Needs Debian's postgresql package (/usr/lib/postgresql/<ver>/bin). As root, the server runs as
the `postgres` user (or `nobody`) through runuser, since postgres refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from typing import Optional


def bin_dir() -> Optional[str]:
    """The newest /usr/lib/postgresql/<ver>/bin with initdb, or the folder of initdb on PATH, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return os.path.dirname(found[-1])
    which = shutil.which("initdb")
    return os.path.dirname(os.path.realpath(which)) if which else None


class Server:
    """Start with `with Server() as url:`; stopped and removed on exit."""

    def __init__(self):
        self.bin = bin_dir()
        self.tmp = None
        self.user = None

    def _run(self, args: list[str]) -> subprocess.CompletedProcess:
        cmd = ["runuser", "-u", self.user, "--"] + args if self.user else args
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def __enter__(self) -> str:
        if self.bin is None:
            raise RuntimeError("PostgreSQL binaries not found (apt-get install -y postgresql)")
        # Under /tmp, not $TMPDIR: the server's user must reach it (a test's TMPDIR may sit under
        # /root, mode 0700), and a unix socket path must stay under 108 bytes.
        self.tmp = tempfile.mkdtemp(prefix="lab-pg-", dir="/tmp" if os.access("/tmp", os.W_OK) else None)
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pw = pwd.getpwnam(name)
                except KeyError:
                    continue
                self.user = name
                os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
                break
        data = os.path.join(self.tmp, "data")
        r = self._run([f"{self.bin}/initdb", "-D", data, "-U", "lab", "--auth=trust", "-E", "UTF8", "--no-sync"])
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr.strip()[-500:]}")
        r = self._run([f"{self.bin}/pg_ctl", "-D", data, "-l", os.path.join(self.tmp, "log"), "-w", "-t", "30",
                       "-o", f"-c listen_addresses='' -c unix_socket_directories={self.tmp} -c fsync=off", "start"])
        if r.returncode:
            log = open(os.path.join(self.tmp, "log")).read()[-800:] if os.path.exists(os.path.join(self.tmp, "log")) else ""
            raise RuntimeError(f"pg_ctl start failed: {r.stderr.strip()[-300:]} {log}")
        for _ in range(50):
            if os.path.exists(os.path.join(self.tmp, ".s.PGSQL.5432")):
                break
            time.sleep(0.1)
        return f"postgresql://lab@/postgres?host={self.tmp}"

    def __exit__(self, *exc):
        if self.tmp:
            self._run([f"{self.bin}/pg_ctl", "-D", os.path.join(self.tmp, "data"), "-m", "immediate", "-w", "stop"])
            shutil.rmtree(self.tmp, ignore_errors=True)
        return False
