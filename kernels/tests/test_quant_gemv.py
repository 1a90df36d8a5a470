"""The skinny (decode) W4A16 / W8A16 kernels, every autotune config, against the dequantized fp32
references (GPU, or the CPU under TRITON_INTERPRET=1), plus planted faults the check must reject."""

import pytest
import torch

from kernels._triton import run_device
from kernels.quant_gemv import CONFIGS_W4, CONFIGS_W4_GEMV, CONFIGS_W8, CONFIGS_W8_V1
from parity.tolerance import Tol, assert_close, compare

DEVICE = run_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="needs a GPU or TRITON_INTERPRET=1")

# Tolerances as kernels/tests/test_quant_matmul.py: the dequantization itself is exact (2^23 magic,
# power-of-two folding), so the error is the accumulation in fp32 and, on the GPU, x's dtype: the
# dot path rounds each dequantized weight and the output to bf16 (2^-8 relative) / fp16 (2^-11).
# fp32 (the CPU interpreter) differs only in summation order. A wrong group index or byte order
# moves outputs by the size of a weight times sqrt(K), far outside: the planted tests show it.
TOL = {torch.bfloat16: Tol(atol=2e-2, rtol=2e-2), torch.float16: Tol(atol=5e-3, rtol=5e-3),
       torch.float32: Tol(atol=1e-4, rtol=1e-4)}
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32  # numpy has no bf16


def w4_case(M, N, K, gs, dtype=DTYPE, seed=0):
    from kernels.quant_matmul import pack_w4

    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 16, (N, K), generator=g)
    scales = torch.rand(K // gs, N, generator=g) * 0.02 + 0.005
    zeros = torch.randint(0, 16, (K // gs, N), generator=g).float()
    x = torch.randn(M, K, generator=g)
    return x.to(DEVICE, dtype), q.to(DEVICE), scales.to(DEVICE, dtype), zeros.to(DEVICE, dtype), pack_w4(q).to(DEVICE)


def w8_case(M, N, K, dtype=DTYPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(-128, 128, (N, K), generator=g, dtype=torch.int8)  # -128 too: the sign flip's corner
    scale = torch.rand(N, generator=g) * 0.01 + 1e-3
    x = torch.randn(M, K, generator=g)
    return x.to(DEVICE, dtype), w.to(DEVICE), scale.to(DEVICE, dtype)


def _ids(cfgs):
    return [str(c) for c in cfgs]


W4_ALL = sorted({c for cs in CONFIGS_W4.values() for c in cs}, key=str)
W8_ALL = sorted({c for sets in (CONFIGS_W8, CONFIGS_W8_V1) for cs in sets.values() for c in cs}, key=str)
W4G_ALL = sorted({c for cs in CONFIGS_W4_GEMV.values() for c in cs}, key=str)


@pytest.mark.parametrize("cfg", W4_ALL, ids=_ids(W4_ALL))
def test_w4_every_config(cfg):
    from kernels.quant_gemv import w4a16_skinny
    from kernels.quant_matmul import w4a16_reference

    M = 1 if not cfg.use_dot else 5  # the FMA path serves M = 1; the dot path any M <= 16
    x, q, s, z, qw = w4_case(M, 80, 512, 128)  # N = 80: a partial last N tile (and N % 16 == 0, as real layers)
    assert_close(w4a16_skinny(x, qw, s, z, 128, cfg).float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE],
                 f"w4 {cfg}")


@pytest.mark.parametrize("cfg", W8_ALL, ids=_ids(W8_ALL))
def test_w8_every_config(cfg):
    from kernels.quant_gemv import w8a16_skinny
    from kernels.quant_matmul import w8a16_reference

    M = 1 if not cfg.use_dot else 7
    x, w, scale = w8_case(M, 48, 1024)
    assert_close(w8a16_skinny(x, w, scale, cfg).float(), w8a16_reference(x, w, scale), TOL[DTYPE], f"w8 {cfg}")


@pytest.mark.parametrize("M", [1, 3, 9])
def test_dispatch_small_m(M):
    """quant_matmul's public entry points route M <= 16 here (default config) and agree."""
    from kernels.quant_matmul import w4a16_matmul, w4a16_reference, w8a16_matmul, w8a16_reference

    x, q, s, z, qw = w4_case(M, 80, 512, 128, seed=M)  # the shapes above: compiled kernels are reused
    assert_close(w4a16_matmul(x, qw, s, z, 128).float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE], "w4 dispatch")
    x8, w, scale = w8_case(M, 48, 1024, seed=M)
    assert_close(w8a16_matmul(x8, w, scale).float(), w8a16_reference(x8, w, scale), TOL[DTYPE], "w8 dispatch")


@pytest.mark.parametrize("use_dot", [False, True])
def test_planted_wrong_group_fails(use_dot):
    """Scales/zeros of the neighbouring group (what an off-by-one group index reads) must fail the check."""
    from kernels.quant_gemv import Config, w4a16_skinny
    from kernels.quant_matmul import w4a16_reference

    cfg = Config(64, 128, 2, use_dot)
    x, q, s, z, qw = w4_case(1 if not use_dot else 4, 64, 512, 128, seed=3)
    ref = w4a16_reference(x, q, s, z, 128)
    assert compare(w4a16_skinny(x, qw, s, z, 128, cfg).float(), ref, TOL[DTYPE]).ok
    wrong = w4a16_skinny(x, qw, s.roll(1, 0), z.roll(1, 0), 128, cfg).float()
    assert not compare(wrong, ref, TOL[DTYPE]).ok


def test_planted_byte_order_fails():
    """W8 read with its bytes reversed within each word must fail the check."""
    from kernels.quant_gemv import Config, w8a16_skinny
    from kernels.quant_matmul import w8a16_reference

    x, w, scale = w8_case(1, 32, 512, seed=4)
    swapped = w.view(32, 128, 4).flip(-1).reshape(32, 512).contiguous()
    got = w8a16_skinny(x, swapped, scale, Config(32, 256, 2, False)).float()
    assert not compare(got, w8a16_reference(x, w, scale), TOL[DTYPE]).ok


@pytest.mark.skipif(DEVICE != "cuda", reason="the tuner times configs on a GPU")
def test_tuner_times_every_candidate_and_keeps_one():
    """tuned_config on a decode-sized layer: each candidate timed (or rejected with its error), the
    fastest kept for the key, and the tuned call still matches the reference."""
    from kernels import quant_gemv as qg
    from kernels.quant_matmul import w4a16_reference

    x, q, s, z, qw = w4_case(1, 4096, 4096, 128, seed=7)
    y = qg.w4a16_skinny(x, qw, s, z, 128)
    key = ("w4", 4096, 4096, 1, 128, x.dtype, x.device)
    assert key in qg._TUNED and qg._TUNED[key] in qg.w4_configs(1, 4096, 128)
    rows = [r for r in qg.tuned_table() if (r["kernel"], r["N"], r["K"], r["m_bucket"]) == ("w4", 4096, 4096, 1)]
    assert len(rows) == len(qg.w4_configs(1, 4096, 128)), rows
    assert sum(bool(r.get("chosen")) for r in rows) == 1
    assert all(r["us"] > 0 for r in rows if "us" in r)
    assert_close(y.float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE], "w4 tuned")
    x, q, s, z, qw, st, zt = w4_gemv_case(1, 4096, 4096, seed=8)
    y = qg.w4a16_gemv(x, qw, st, zt)
    key = ("w4g", 4096, 4096, 1, 128, x.dtype, x.device)
    from kernels.gemv4 import extra_gemv_configs  # the CUDA mma configs too, where kernels._C has them

    cands = qg.w4_configs(1, 4096, 128, gemv_layout=True) + extra_gemv_configs(x, 4096, st, zt)
    assert key in qg._TUNED and qg._TUNED[key] in cands
    rows = [r for r in qg.tuned_table() if (r["kernel"], r["N"], r["K"], r["m_bucket"]) == ("w4g", 4096, 4096, 1)]
    assert len(rows) == len(cands), rows
    assert not [r for r in rows if str(r.get("error", "")).startswith("WRONG")], rows  # every candidate agreed
    assert_close(y.float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE], "w4 gemv tuned")


def w4_gemv_case(M, N, K, seed=0):
    """A w4_case plus its GEMV layout: (x, q, s, z, qw (N, K / 8), s (N, G), z (N, G))."""
    from kernels.quant_gemv import pack_w4_gemv

    x, q, s, z, _ = w4_case(M, N, K, 128, seed=seed)
    return x, q, s, z, pack_w4_gemv(q.cpu()).to(DEVICE), s.T.contiguous(), z.T.contiguous()


@pytest.mark.parametrize("cfg", W4G_ALL, ids=_ids(W4G_ALL))
def test_w4_gemv_layout_every_config(cfg):
    """Every config the GEMV-layout tuner may pick (the row-streaming kernel at M = 1, its splits with
    the two-pass sum, the SHUF tensor-core tiles at M = 5) against the dequantized fp32 reference.
    K = 2048: whole 1024-code tiles, and SPLIT_K 4 leaves some splits without a tile (zero partials);
    N = 48: a partial last row block for BLOCK_N = 32 (rows past N clamp to row 0 and are not stored);
    N and K divisible by 16 specialize the kernels as the Llama shapes do, so on a GPU the bench
    process reuses these compiles from Triton's cache."""
    from kernels.quant_gemv import w4a16_gemv
    from kernels.quant_matmul import w4a16_reference

    for M in ((1,) if cfg.gemv else (1, 5)):  # the tiles serve M = 2..16 and are M = 1 fallbacks
        x, q, s, z, qw, st, zt = w4_gemv_case(M, 48, 2048, seed=11)
        assert_close(w4a16_gemv(x, qw, st, zt, cfg).float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE],
                     f"w4 gemv layout {cfg} M={M}")


def test_w4_gemv_pack_round_trip_and_prefill_tiles():
    """pack_w4_gemv / unpack_w4_gemv invert each other, dequantize_w4_gemv is the reference's weight, and
    M > 16 on the GEMV layout (the prefill tiles with SHUF) matches the reference too."""
    from kernels.quant_gemv import dequantize_w4_gemv, unpack_w4_gemv
    from kernels.quant_matmul import w4a16_matmul_gemv, w4a16_reference

    x, q, s, z, qw, st, zt = w4_gemv_case(20, 48, 256, seed=12)
    assert torch.equal(unpack_w4_gemv(qw.cpu()), q.cpu().long())
    g = torch.arange(256) // 128
    want = (q.cpu().float() - z.cpu().float()[g].T) * s.cpu().float()[g].T
    assert torch.equal(dequantize_w4_gemv(qw.cpu(), st.cpu(), zt.cpu()), want)
    assert_close(w4a16_matmul_gemv(x, qw, st, zt).float(), w4a16_reference(x, q, s, z, 128), TOL[DTYPE],
                 "w4 gemv layout, prefill tiles")


@pytest.mark.parametrize("fold", [False, True])
@pytest.mark.parametrize("fault", ["wrong_group", "gptq_order"])
def test_planted_gemv_layout_faults_fail(fault, fold):
    """The GEMV kernel (both inner loops) fed the neighbouring group's scales/zeros, or words in GPTQ's
    code order instead of the shuffled one (a packing/kernel mismatch), must fail the check; so must
    the tuner's agrees()."""
    from kernels.quant_gemv import Config, agrees, w4a16_gemv
    from kernels.quant_matmul import pack_w4, w4a16_reference

    cfg = Config(8, 512, 1, False, 4, 3, gemv=True, fold=fold)
    x, q, s, z, qw, st, zt = w4_gemv_case(1, 32, 1024, seed=13)
    ref = w4a16_reference(x, q, s, z, 128)
    good = w4a16_gemv(x, qw, st, zt, cfg).float()
    assert compare(good, ref, TOL[DTYPE]).ok and agrees(good, ref)[0]
    if fault == "wrong_group":
        bad = w4a16_gemv(x, qw, st.roll(1, 1).contiguous(), zt.roll(1, 1).contiguous(), cfg).float()
    else:
        bad = w4a16_gemv(x, pack_w4(q.cpu()).T.contiguous().to(DEVICE), st, zt, cfg).float()
    assert not compare(bad, ref, TOL[DTYPE]).ok
    assert not agrees(bad, ref)[0]
