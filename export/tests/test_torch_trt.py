"""export.torch_trt without torch_tensorrt or a GPU: one line, exit 0."""

import importlib.util

import pytest
import torch

from export.tests.cli import run_cli


@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is not None and torch.cuda.is_available(),
                    reason="torch_tensorrt and a GPU are present: the binary compiles for real")
def test_skips_cleanly():
    proc = run_cli("torch_trt")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.strip().splitlines()) == 1 and "nothing compiled" in proc.stdout
