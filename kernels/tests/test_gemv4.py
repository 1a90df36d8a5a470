"""kernels/gemv4.py: the W4A16 g128 tensor-core kernels on the GEMV layout against the fp32 dequantized
reference, with planted faults the checks must reject.

CPU: the GEMV layout's tensor-core fragment map (an emulation of kernels/csrc/gemv4.cu's lanes, in
torch), the tc tiles under TRITON_INTERPRET=1, the CUDA config table in sync with the Python one.
GPU: every CUDA mma config at 1..8 tokens, both activation and scale dtypes, and the tuner.

Tolerance (TOL, as kernels/tests/test_quant_gemv.py): the dequantization is exact (MAGIC + q in a
16-bit float), so a correct kernel differs from the fp32 reference by fp32 summation order, the fp32
rounding of the offset-carrying group sums (~1e-5 relative, bf16) and, on the GPU, its bf16 output
(2^-9 relative): outputs here are O(1..10), so <= ~0.02 apart. A zero point off by one moves a group's
sum by s X_g (~0.1 per group here), a wrong nibble order by about a weight times sqrt(K): both far
outside, as the planted tests show.
"""

import re
from pathlib import Path

import pytest
import torch

from kernels._triton import run_device
from parity.tolerance import Tol, assert_close, compare

DEVICE = run_device()
TOL = {torch.bfloat16: Tol(atol=2e-2, rtol=2e-2), torch.float16: Tol(atol=5e-3, rtol=5e-3),
       torch.float32: Tol(atol=1e-4, rtol=1e-4)}


def gemv_case(M, N, K, dtype=torch.float32, sdtype=None, device="cpu", seed=0):
    """(x (M, K), codes q (N, K), s, z (N, K / 128), qw (N, K / 8) in the GEMV layout, fp32 reference y)."""
    from kernels.quant_gemv import pack_w4_gemv

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g)
    s = torch.rand(N, K // 128, generator=g) * 0.02 + 0.005
    z = torch.randint(0, 16, (N, K // 128), generator=g).float()
    x = torch.randn(M, K, generator=g).to(dtype)
    sd = sdtype or dtype
    s, z = s.to(sd), z.to(sd)
    gi = torch.arange(K) // 128
    ref = x.float() @ ((q.float() - z.float()[:, gi]) * s.float()[:, gi]).T
    return (x.to(device), q, s.to(device), z.to(device), pack_w4_gemv(q).to(device), ref.to(device))


# --- CPU: the fragment map of kernels/csrc/gemv4.cu, emulated ------------------------------------------

def _pair(w: torch.Tensor, i: int, magic: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lop3_pair(w >> 4i): (low half, high half) = (MAGIC + nibble i, MAGIC + nibble i + 4), as floats."""
    v = (w.to(torch.int64) & 0xFFFFFFFF) >> (4 * i)
    return magic + (v & 0xF).double(), magic + ((v >> 16) & 0xF).double()


def emulate_mma_gemv(x, qw, s, z, magic=128.0, pair_order=(0, 1, 2, 3)):
    """y (M, N) as gemv4.cu computes it: per 16-row tile and group, lane (gid, t)'s A and B fragments of
    the 8 k16 steps built from its 16-byte loads, C += A B per step (the m16n8k16 fragment map of the
    PTX ISA), X_g by A = ones, then acc += s (S - (MAGIC + z) X_g). pair_order: which LOP3 pair feeds
    (step 2p: a0a1, a4a5; step 2p + 1: a0a1, a4a5); anything but (0, 1, 2, 3) is a planted fault."""
    M, K = x.shape
    N = qw.shape[0]
    G = K // 128
    xd = x.double()
    y = torch.zeros(M, N, dtype=torch.float64)
    for n0 in range(0, N, 16):
        for g in range(G):
            S = torch.zeros(16, 8, dtype=torch.float64)
            X = torch.zeros(16, 8, dtype=torch.float64)
            for step in range(8):
                p, half = step // 2, step % 2
                A = torch.zeros(16, 16, dtype=torch.float64)
                B = torch.zeros(16, 8, dtype=torch.float64)
                for gid in range(8):
                    m = min(gid, M - 1)
                    for t in range(4):
                        xs = xd[m, 128 * g + 32 * p + 8 * t: 128 * g + 32 * p + 8 * t + 8]  # the 16-byte x load
                        b = xs[4 * half: 4 * half + 4]  # b0, b1, b2, b3 (uint4 .x .y or .z .w)
                        B[2 * t, gid], B[2 * t + 1, gid], B[2 * t + 8, gid], B[2 * t + 9, gid] = b
                        for h in range(2):  # rows gid, gid + 8
                            w = qw[n0 + gid + 8 * h, 16 * g + 4 * t + p]  # word p of the lane's 16-byte load
                            lo = _pair(w, pair_order[2 * half], magic)  # a0a1 (h = 0) / a2a3 (h = 1)
                            hi = _pair(w, pair_order[2 * half + 1], magic)  # a4a5 / a6a7
                            r = gid + 8 * h
                            A[r, 2 * t], A[r, 2 * t + 1] = lo
                            A[r, 2 * t + 8], A[r, 2 * t + 9] = hi
                S += A @ B
                X += torch.ones(16, 16, dtype=torch.float64) @ B
            sc = s[n0:n0 + 16, g].double()[:, None]
            mz = magic + z[n0:n0 + 16, g].double()[:, None]
            part = sc * (S - mz * X)  # (16 rows, 8 columns = tokens)
            y[:, n0:n0 + 16] += part[:, :M].T
    return y


def test_mma_fragment_map_emulated():
    """The layout + fragment map gemv4.cu relies on gives the reference (fp64 emulation), for 1 and 3
    tokens; the same emulation with the LOP3 pairs in the wrong order (a planted nibble-order fault)
    and with a zero point off by one does not."""
    for M in (1, 3):
        x, q, s, z, qw, ref = gemv_case(M, 32, 256, seed=3 + M)
        assert_close(emulate_mma_gemv(x, qw, s, z).float(), ref, TOL[torch.float32], f"emulated mma M={M}")
    x, q, s, z, qw, ref = gemv_case(2, 16, 256, seed=9)
    bad = compare(emulate_mma_gemv(x, qw, s, z, pair_order=(1, 0, 2, 3)).float(), ref, TOL[torch.float32], "pairs")
    assert not bad.ok, "a swapped nibble pair must fail the check"
    bad = compare(emulate_mma_gemv(x, qw, s, z + 1).float(), ref, TOL[torch.float32], "zero + 1")
    assert not bad.ok, "a zero point off by one must fail the check"


def test_cuda_config_table_in_sync():
    """gemv4.cu's LAB_W4_MMA_CONFIGS lists MMA_CONFIGS in order (the id crosses the binding)."""
    from kernels.gemv4 import MMA_CONFIGS

    src = (Path(__file__).resolve().parents[1] / "csrc" / "gemv4.cu").read_text()
    rows = [tuple(int(v) for v in m.groups()) for m in re.finditer(r"X\((\d+), (\d+), (\d+), (\d+)\)", src)]
    assert [r[0] for r in rows] == list(range(len(MMA_CONFIGS)))
    assert [r[1:] for r in rows] == list(MMA_CONFIGS)


# --- the tc tiles (Triton: the GPU, or the CPU interpreter) ----------------------------------------------

needs_triton = pytest.mark.skipif(DEVICE is None, reason="needs a GPU or TRITON_INTERPRET=1")
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32


@needs_triton
@pytest.mark.parametrize("cfg", __import__("kernels.gemv4", fromlist=["x"]).CONFIGS_TC[:3]
                         + __import__("kernels.gemv4", fromlist=["x"]).CONFIGS_TC[8:9]
                         + __import__("kernels.gemv4", fromlist=["x"]).CONFIGS_TC_SKINNY[:1], ids=str)
def test_tc_tiles(cfg):
    """The tc tiles (batch > 16 and the skinny buckets) match the reference, rows and tokens past the
    tile masked (N = 48, M = 20 / 3)."""
    from kernels.gemv4 import launch_tc

    for M in (3, 20):
        x, q, s, z, qw, ref = gemv_case(M, 48, 256, DTYPE, device=DEVICE, seed=M)
        assert_close(launch_tc(cfg, x, qw, s, z).float(), ref, TOL[DTYPE], f"tc {cfg} M={M}")


@needs_triton
@pytest.mark.parametrize("fold", [False, True])
def test_tc_tiles_fp16(fold):
    """fp16 activations, both dequantizations (fold: the codes OR-ed into fp16 as 1024 + q, offset and zero
    point off once per group; the interpreter runs it too: numpy has fp16), 3 and 20 tokens; a zero point
    off by one fails the fold path's check."""
    from kernels.gemv4 import launch_tc
    from kernels.quant_gemv import Config

    cfg = Config(64, 128, 1, True, 4, 3, block_m=16, fold=fold)
    for M in (3, 20):
        x, q, s, z, qw, ref = gemv_case(M, 48, 256, torch.float16, device=DEVICE, seed=50 + M)
        assert_close(launch_tc(cfg, x, qw, s, z).float(), ref, TOL[torch.float16], f"tc {cfg} fp16 M={M}")
    assert not compare(launch_tc(cfg, x, qw, s, z + 1).float(), ref, TOL[torch.float16], "zero + 1").ok


@needs_triton
def test_tc_planted_faults_fail():
    """The tc tiles fed the neighbouring group's zero points, or the GEMV words of another permutation
    (GPTQ's within-group order), fail the check."""
    from kernels.gemv4 import CONFIGS_TC, launch_tc
    from kernels.quant_matmul import pack_w4

    cfg = CONFIGS_TC[0]
    x, q, s, z, qw, ref = gemv_case(17, 32, 256, DTYPE, device=DEVICE, seed=21)
    assert compare(launch_tc(cfg, x, qw, s, z).float(), ref, TOL[DTYPE], "good").ok
    bad = launch_tc(cfg, x, qw, s, z.roll(1, 1).contiguous()).float()
    assert not compare(bad, ref, TOL[DTYPE], "zeros of the next group").ok
    gptq = pack_w4(q).T.contiguous().to(qw.device)  # same words per row, k = 8 w + j within them
    assert not compare(launch_tc(cfg, x, gptq, s, z).float(), ref, TOL[DTYPE], "wrong nibble order").ok


def test_dispatch_batch_64_goes_to_tc_tiles():
    """w4a16_matmul_gemv sends M > 16 to the tc tiles (the batch-64 fix), checked on whatever runs Triton."""
    if DEVICE is None:
        pytest.skip("needs a GPU or TRITON_INTERPRET=1")
    from kernels.quant_matmul import w4a16_matmul_gemv

    x, q, s, z, qw, ref = gemv_case(33, 32, 256, DTYPE, device=DEVICE, seed=5)
    assert_close(w4a16_matmul_gemv(x, qw, s, z).float(), ref, TOL[DTYPE], "w4a16_matmul_gemv M=33")


# --- GPU: the CUDA mma GEMV ------------------------------------------------------------------------------

def _mma_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from kernels.gemv4 import _ext_module

    if _ext_module() is None:
        pytest.skip("kernels._C (with gemv4.cu) is not available")


MMA_IDS = list(range(len(__import__("kernels.gemv4", fromlist=["x"]).MMA_CONFIGS)))


@pytest.mark.parametrize("cid", MMA_IDS)
@pytest.mark.parametrize("dtype,sdtype", [(torch.bfloat16, torch.bfloat16), (torch.bfloat16, torch.float16),
                                          (torch.float16, torch.float16)])
def test_mma_every_config(cid, dtype, sdtype):
    """Every CUDA config at 1, 2, 5 and 8 tokens (K = 1024: 8 groups; K = 1536: 12 groups, U = 4 splits
    unevenly across warps), both activation dtypes and scale dtypes."""
    _mma_or_skip()
    from kernels.gemv4 import launch_mma, mma_config

    cfg = mma_config(cid)
    for K in (1024, 1536):
        for M in (1, 2, 5, 8):
            x, q, s, z, qw, ref = gemv_case(M, 64, K, dtype, sdtype, "cuda", seed=M + K)
            y = launch_mma(cfg, x, qw, s, z)
            torch.cuda.synchronize()
            assert_close(y.float(), ref, TOL[dtype], f"mma {cfg} {dtype} scales {sdtype} K={K} M={M}")


def test_mma_planted_faults_fail():
    """The mma kernel fed zero points off by one, or words in GPTQ's within-group order, fails."""
    _mma_or_skip()
    from kernels.gemv4 import launch_mma, mma_config
    from kernels.quant_matmul import pack_w4

    cfg = mma_config(0)
    x, q, s, z, qw, ref = gemv_case(1, 64, 1024, torch.bfloat16, device="cuda", seed=31)
    assert compare(launch_mma(cfg, x, qw, s, z).float(), ref, TOL[torch.bfloat16], "good").ok
    assert not compare(launch_mma(cfg, x, qw, s, z + 1).float(), ref, TOL[torch.bfloat16], "zero + 1").ok
    gptq = pack_w4(q).T.contiguous().cuda()
    assert not compare(launch_mma(cfg, x, gptq, s, z).float(), ref, TOL[torch.bfloat16], "nibble order").ok


@pytest.mark.parametrize("M", [1, 8])
def test_tuner_offers_and_checks_mma(M):
    """quant_gemv.w4a16_gemv's tuner on a 4096 x 4096 layer times the mma candidates beside the Triton
    ones (each checked first) and its pick matches the reference."""
    _mma_or_skip()
    from kernels import quant_gemv as qg

    x, q, s, z, qw, ref = gemv_case(M, 4096, 4096, torch.bfloat16, torch.float16, "cuda", seed=40 + M)
    y = qg.w4a16_gemv(x, qw, s, z)
    rows = [r for r in qg.tuned_table() if r["kernel"] == "w4g" and r["N"] == 4096 and r["K"] == 4096
            and r["m_bucket"] == (1 if M == 1 else 8)]
    timed = [r["config"] for r in rows if "us" in r]
    assert any(c.startswith("mma_") for c in timed), rows
    assert not [r for r in rows if r["config"].startswith("mma_") and "error" in r], rows
    assert_close(y.float(), ref, TOL[torch.bfloat16], f"tuned w4 gemv M={M}")
