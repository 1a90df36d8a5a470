"""cache/kv_quant.py: int8 / int4 K/V round trip bounds, exact dequantization, the model hook, errors."""

import pytest
import torch

from cache import kv_quant
from cache.kv_quant import KVQuantError, KVQuantizer, dequantize_kv, install_kv_quant, quantize_kv
from model.config import ModelConfig
from model.llama import Transformer
from parity.tolerance import Tol, assert_close


def kv_like(seed=0, shape=(2, 3, 17, 64)):
    """Fresh K/V-shaped values with per-channel outliers (keys have a few large channels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g)
    x[..., 5] *= 20.0
    x[0, 1, 3] = 0.0  # an all-zero head vector: must round-trip to zeros, not NaN
    return x


def bound_violation(x, bits, group_size=None):
    """max over elements of |x - x'| - scale/2: <= 0 when each value rounds to its nearest code."""
    q, s, z = quantize_kv(x, bits, group_size)
    xq = dequantize_kv(q, s, z, x.shape)
    g = x.reshape(*q.shape)
    err = (g - xq.reshape(*q.shape)).abs()
    s = s.float()
    # fp32: x / scale and the product carry ~1 ulp each; 1e-6 relative to the group range covers it.
    return float((err - s / 2 - 1e-6 * (s * (2 ** bits - 1))).max()), q, xq


@pytest.mark.parametrize("bits,group_size", [(8, None), (4, None), (8, 16), (4, 16)])
def test_round_trip_within_half_a_step(bits, group_size):
    x = kv_like(seed=bits)
    over, q, xq = bound_violation(x, bits, group_size)
    assert not over > 0, over  # |x - x'| <= scale / 2 = range / (2 (2^bits - 1)) per token, head (group)
    assert q.dtype == torch.uint8 and int(q.max()) <= 2 ** bits - 1
    assert torch.equal(xq[0, 1, 3], torch.zeros(64))
    # Relative to each head vector's range: int8 <= 1/510, int4 <= 1/30 (the same bound, stated per bits),
    # times 1 + 2^-10 for the fp16 scale rounded up.
    rng = (x.amax(-1, keepdim=True).clamp(min=0) - x.amin(-1, keepdim=True).clamp(max=0)).clamp(min=1e-12)
    assert not float(((x - xq).abs() / rng).max()) > (1 + 2 ** -10) / (2 * (2 ** bits - 1)) + 1e-6


def test_planted_floor_rounding_breaks_the_bound(monkeypatch):
    # The bound catches a quantizer that truncates instead of rounding (error up to a whole step).
    monkeypatch.setattr(kv_quant.torch, "round", torch.floor)
    over, _, _ = bound_violation(kv_like(seed=3), 8)
    assert over > 0


def test_dequantized_values_are_exactly_the_stored_codes():
    # Fake quantization on store is exact: the fp32 x' equals scale * (q - zero) computed in fp64.
    x = kv_like(seed=4)
    for bits in (8, 4):
        q, s, z = quantize_kv(x, bits)
        exact = (s.double() * (q.double() - z.double())).reshape(x.shape)
        assert torch.equal(KVQuantizer(bits)(x).double(), exact)


def tiny(seed=0):
    torch.manual_seed(seed)
    m = Transformer(ModelConfig.from_name("tiny"))
    for p in m.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return m.eval()


def test_model_hook_int8_closer_than_int4_and_cache_decode_matches_prefill():
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(7))
    m = tiny(1)
    with torch.no_grad():
        ref = m(ids)
        errs = {}
        for bits in (8, 4):
            install_kv_quant(m, bits)
            errs[bits] = float((m(ids) - ref).norm() / ref.norm())
        assert 0 < errs[8] < errs[4], errs  # both change the logits; 4 bits more than 8
        full = m(ids)  # int4 still installed
        # Per-token scales: a token's stored K/V do not depend on the others, so decoding one token
        # at a time over the static cache gives the full forward's logits (fp32 reassociation ~1e-6).
        m.setup_caches(2, 16)
        steps = [m(ids[:, t:t + 1], torch.tensor([t])) for t in range(ids.shape[1])]
        assert_close(torch.cat(steps, 1), full, Tol(atol=1e-5, rtol=1e-5), "int4-KV decode vs prefill")
        m.remove_caches()
        install_kv_quant(m, None)
        assert torch.equal(m(ids), ref)


def test_bad_bits_and_group_size_are_one_clear_error():
    with pytest.raises(KVQuantError, match=r"unsupported kv_bits=3; choose one of \(4, 8\)"):
        KVQuantizer(3)
    with pytest.raises(KVQuantError, match="kv group_size=24 does not divide head_dim=16"):
        install_kv_quant(tiny(), 8, group_size=24)
