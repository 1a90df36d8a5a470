"""The fused MoE kernel's check (kernels/fused_moe.py) against the per-expert loop (model/moe.py).

Inputs: x ~ N(0, 1), expert weights ~ N(0, 1/fan_in), a random router: activations and outputs
are O(1), so a per-element bound atol + rtol * |ref| is meaningful everywhere. The reference is
moe_reference in fp64 from the same (already rounded) inputs and the same routing.

Tolerances per output dtype, and why:
- fp32: Tol(1e-5, 1e-5). IEEE fp32 dots (no TF32); only the summation order differs from the
  loop; K <= 14336 terms give ~sqrt(K) * 2^-24 ~ 1e-5 relative at worst. Measured on the CPU
  interpreter (E 4, H 64, I 96, 37 tokens): 1.0e-6 max abs error on outputs up to 3.0.
- fp16: Tol(6e-3, 6e-3). gate_up, h and each expert's output are rounded to fp16 (2^-11
  relative) once each, like the loop in fp16; a few roundings compound to ~2e-3. Measured
  (interpreter, 37 tokens): kernel 1.2e-3, loop 1.9e-3 max abs.
- bf16: Tol(4e-2, 4e-2). The same roundings at 2^-8 relative. Measured (interpreter, 37
  tokens): kernel 2.2e-2, loop 1.1e-2 max abs (the k picks are summed after rounding each).
Every check also runs the PyTorch loop in the same dtype against the same fp64 reference and
requires it to meet the same bound, so no bound is tighter than the reference itself meets nor
looser than needed by much (the loop's error is printed beside the kernel's). A planted fault
(tokens sent to the next expert: parity/test_mutations.py) moves outputs by O(1).
"""

from __future__ import annotations

import torch

from model.moe import moe_reference, route
from parity.tolerance import Tol, assert_close

TOLERANCE = {torch.float32: Tol(1e-5, 1e-5), torch.float16: Tol(6e-3, 6e-3), torch.bfloat16: Tol(4e-2, 4e-2)}


def moe_inputs(n_tokens: int, n_experts: int, hidden: int, inter: int, top_k: int, dtype, device, seed: int = 0):
    """(x (N, H), w13 (E, 2I, H), w2 (E, H, I), weights (N, k), ids (N, k)) in dtype on device."""
    g = torch.Generator(device=device).manual_seed(seed)  # drawn on the device: a Mixtral layer is 1.4e9 numbers
    x = torch.randn(n_tokens, hidden, generator=g, device=device)
    w13 = torch.randn(n_experts, 2 * inter, hidden, generator=g, device=device) * hidden ** -0.5
    w2 = torch.randn(n_experts, hidden, inter, generator=g, device=device) * inter ** -0.5
    gate = torch.randn(n_experts, hidden, generator=g, device=device) * hidden ** -0.5
    x, w13, w2, gate = (t.to(dtype=dtype) for t in (x, w13, w2, gate))
    weights, ids = route(x, gate, top_k)
    return x, w13, w2, weights, ids


def check_fused_moe(n_tokens: int, n_experts: int, hidden: int, inter: int, top_k: int, dtype, device,
                    seed: int = 0) -> tuple[float, float]:
    """Assert fused_moe and the same-dtype loop both meet TOLERANCE[dtype] against the fp64 loop;
    return (kernel's, loop's) max abs error."""
    from kernels.fused_moe import fused_moe

    x, w13, w2, weights, ids = moe_inputs(n_tokens, n_experts, hidden, inter, top_k, dtype, device, seed)
    ref = moe_reference(x.double(), w13.double(), w2.double(), weights.double(), ids)
    loop = moe_reference(x, w13, w2, weights, ids)
    got = fused_moe(x, w13, w2, weights, ids)
    assert got.dtype == dtype and got.shape == x.shape
    tol = TOLERANCE[dtype]
    assert_close(loop, ref, tol, f"moe loop {dtype}")
    assert_close(got, ref, tol, f"fused_moe {dtype} {n_tokens} tokens")
    return (got.double() - ref).abs().max().item(), (loop.double() - ref).abs().max().item()
