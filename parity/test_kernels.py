"""Kernel parity on the CPU: the reference, the dispatcher's errors, and the Triton
faces through Triton's interpreter (TRITON_INTERPRET=1, set by this file's target)."""

from __future__ import annotations

import pytest
import torch

from kernels import _triton, ops
from parity import kernel_cases as kc
from parity.tolerance import compare

DTYPES = list(kc.TOLERANCE)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,hidden", kc.NORM_SHAPES)
def test_reference_rms_norm(lead, hidden, dtype):
    kc.check_rms_norm("reference", lead, hidden, dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,hidden", kc.NORM_SHAPES[:5])
def test_reference_fused_add(lead, hidden, dtype):
    kc.check_fused_add("reference", lead, hidden, dtype, "cpu")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("lead,inter", kc.SILU_SHAPES)
def test_reference_silu_and_mul(lead, inter, dtype):
    kc.check_silu("reference", lead, inter, dtype, "cpu")


needs_interpreter = pytest.mark.skipif(not (_triton.HAVE_TRITON and _triton.interpreting()),
                                       reason="needs Triton with TRITON_INTERPRET=1")

# The interpreter runs each program in NumPy: keep to a few rows.
INTERP_NORM = [((1,), 64), ((3,), 111), ((2,), 4097), ((1,), 16384)]


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,hidden", INTERP_NORM)
def test_triton_rms_norm_interpreted(lead, hidden, dtype):
    kc.check_rms_norm("triton", lead, hidden, dtype, "cpu")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,hidden", INTERP_NORM[:3])
def test_triton_fused_add_interpreted(lead, hidden, dtype):
    kc.check_fused_add("triton", lead, hidden, dtype, "cpu")


@needs_interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("lead,inter", [((1,), 64), ((3,), 111), ((2,), 4096)])
def test_triton_silu_interpreted(lead, inter, dtype):
    kc.check_silu("triton", lead, inter, dtype, "cpu")


def test_unwritten_output_fails():
    """The harness catches an unwritten output: a face that writes nothing leaves NaN, which fails."""
    x = kc.random_input((2, 64), torch.float32, "cpu", 0)
    result = compare(kc.poisoned_like(x), x, kc.TOLERANCE[torch.float32])
    assert not result.ok and result.ratio == float("inf") and result.num_bad == x.numel()


def test_dispatcher_uses_reference_on_cpu():
    x = kc.random_input((4, 64), torch.float32, "cpu", 3)
    w = kc.random_input((64,), torch.float32, "cpu", 4)
    torch.testing.assert_close(ops.rms_norm(x, w), kc.ref_rms_norm64(x, w).float(), rtol=1e-5, atol=1e-5)
    gu = kc.random_input((4, 128), torch.float32, "cpu", 5)
    torch.testing.assert_close(ops.silu_and_mul(gu), kc.ref_silu64(gu).float(), rtol=1e-5, atol=1e-5)
    res = kc.random_input((4, 64), torch.float32, "cpu", 6)
    want_res = res + x
    ops.fused_add_rms_norm(x, res, w)
    torch.testing.assert_close(res, want_res)


@pytest.mark.parametrize("call,match", [
    (lambda: ops.rms_norm(torch.ones(4, 8, dtype=torch.int32), torch.ones(8)), "dtype torch.int32"),
    (lambda: ops.rms_norm(torch.ones(4, 8), torch.ones(7)), r"weight must be \(8,\)"),
    (lambda: ops.rms_norm(torch.ones(8, 4).t(), torch.ones(8)), "contiguous"),
    (lambda: ops.rms_norm(torch.ones(4, 8), torch.ones(8, dtype=torch.float16)), "weight dtype"),
    (lambda: ops.rms_norm(torch.ones(4, 8), torch.ones(8), backend="nope"), "unknown kernel backend"),
    (lambda: ops.rms_norm(torch.ones(4, 8), torch.ones(8), backend="cuda"), "needs a CUDA tensor"),
    (lambda: ops.silu_and_mul(torch.ones(4, 7)), "must be even"),
    (lambda: ops.fused_add_rms_norm(torch.ones(4, 8), torch.ones(3, 8), torch.ones(8)), "residual"),
])
def test_dispatcher_errors_are_clear(call, match):
    with pytest.raises(ops.KernelInputError, match=match):
        call()


def test_env_override(monkeypatch):
    monkeypatch.setenv("LAB_KERNEL_BACKEND", "cuda")
    with pytest.raises(ops.KernelInputError, match="backend 'cuda'"):
        ops.rms_norm(torch.ones(2, 8), torch.ones(8))
