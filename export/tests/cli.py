"""Run an export binary as `python -m export.<name>` from the repo root (as on the GPU box)."""

import subprocess
import sys
from pathlib import Path

# Not resolved: under Bazel this file is a symlink and the runfiles tree is the root.
REPO = Path(__file__).absolute().parents[2]


def run_cli(name, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", f"export.{name}", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def error_line(proc) -> str:
    """Assert exit 2 with exactly one `error: ...` line on stderr; return it."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]
