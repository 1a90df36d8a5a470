"""Kernel parity on the GPU: CUDA and Triton faces against fp64 (tagged requires-gpu)."""

from __future__ import annotations

import pytest
import torch

from kernels import ops
from parity import kernel_cases as kc

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DTYPES = list(kc.TOLERANCE)
FACES = ["cuda", "triton"]


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,hidden", kc.NORM_SHAPES + [((8192,), 4096), ((33,), 8192)])
def test_rms_norm(face, lead, hidden, dtype):
    kc.check_rms_norm(face, lead, hidden, dtype, "cuda")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,hidden", kc.NORM_SHAPES)
def test_fused_add_rms_norm(face, lead, hidden, dtype):
    kc.check_fused_add(face, lead, hidden, dtype, "cuda")


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,inter", kc.SILU_SHAPES + [((70000,), 64)])
def test_silu_and_mul(face, lead, inter, dtype):
    kc.check_silu(face, lead, inter, dtype, "cuda")


def test_dispatcher_picks_cuda_first():
    assert ops.available_backends("cuda")[0] == "cuda"


def test_device_mismatch_is_clear():
    with pytest.raises(ops.KernelInputError, match="weight is on cpu"):
        ops.rms_norm(torch.ones(2, 8, device="cuda"), torch.ones(8))
