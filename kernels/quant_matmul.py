"""Weight-only quantized matmuls in Triton: W4A16 (group dequant fused into the GEMM/GEMV) and W8A16.

w4a16_matmul(x, qweight, scales, zeros, group_size):
    y[m, n] = sum_k x[m, k] * scales[k // gs, n] * (q[k, n] - zeros[k // gs, n])
    qweight int32 (K / 8, N): GPTQ packing along K (input k at bits 4 * (k % 8) of word k // 8),
    scales (K / gs, N) in x's dtype, zeros (K / gs, N) fp (the integer zero points, unpacked).
    Groups are contiguous (no act-order permutation: reorder K once at load instead).
w8a16_matmul(x, w_int8, scale):
    y[m, n] = scale[n] * sum_k x[m, k] * w[n, k]       (quant/int8.py's per-channel layout)
Each kernel tile reads BLOCK_K x BLOCK_N codes once, dequantizes in registers and feeds tl.dot
with fp32 accumulation; the bytes read are the packed weights, which is the point at decode
(weight-bound). References: `w4a16_reference`, `w8a16_reference` (dequantize, then matmul in fp32).
Decode batches (M <= 16) go to kernels/quant_gemv.py's split-K skinny kernels instead (tuned per
shape); the tiles here serve prefill-sized M.
"""

from __future__ import annotations

import torch

from kernels import quant_gemv

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:
    @triton.jit
    def _w4a16_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, y_ptr, M, N, K, stride_wk, stride_wn, stride_sg, stride_sn,
                      GS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      SHUF: tl.constexpr):
        # SHUF: quant_gemv's GEMV layout (pack_w4_gemv)
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            if SHUF:  # input c of a group: word 4 ((c % 32) // 8) + c // 32, code (c % 8) // 2 + 4 (c % 2)
                c = kk % 128
                wk = (kk // 128) * 16 + 4 * ((c % 32) // 8) + c // 32
                shift = ((c % 8) // 2 + 4 * (c % 2)) * 4
            else:
                wk = kk // 8
                shift = (kk % 8) * 4
            words = tl.load(qw_ptr + wk[:, None] * stride_wk + rn[None, :] * stride_wn,
                            mask=(kk[:, None] < K) & (rn[None, :] < N), other=0)
            q = (words >> shift[:, None]) & 0xF  # (BLOCK_K, BLOCK_N) codes
            if GS % BLOCK_K == 0:  # one group per tile: its scale / zero row once, broadcast over k
                g0 = k0 // GS
                s = tl.load(s_ptr + g0 * stride_sg + rn * stride_sn, mask=rn < N, other=0.0)[None, :]
                z = tl.load(z_ptr + g0 * stride_sg + rn * stride_sn, mask=rn < N, other=0.0)[None, :]
            else:
                g = kk[:, None] // GS
                s = tl.load(s_ptr + g * stride_sg + rn[None, :] * stride_sn,
                            mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
                z = tl.load(z_ptr + g * stride_sg + rn[None, :] * stride_sn,
                            mask=(kk[:, None] < K) & (rn[None, :] < N), other=0.0)
            w = ((q.to(tl.float32) - z.to(tl.float32)) * s.to(tl.float32)).to(x.dtype)
            acc += tl.dot(x, w)
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def _w8a16_kernel(x_ptr, w_ptr, s_ptr, y_ptr, M, N, K,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m, pid_n = tl.program_id(0), tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * K + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K), other=0.0)
            w = tl.load(w_ptr + rn[None, :] * K + kk[:, None], mask=(kk[:, None] < K) & (rn[None, :] < N), other=0)
            acc += tl.dot(x, w.to(x.dtype))
        s = tl.load(s_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        acc = acc * s[None, :]
        tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))


def _blocks(M: int) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K): a 16-row tile for decode batches (tl.dot's minimum), larger for prefill."""
    return (16 if M <= 16 else 64), 64, 128


def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int, skinny: bool = True) -> torch.Tensor:
    """x (..., K) fp16/bf16 (fp32 under the interpreter) -> (..., N) in x's dtype (module docstring).
    skinny=False keeps M <= 16 on the tiles here (the bench's before/after row)."""
    K = x.shape[-1]
    N = qweight.shape[1]
    assert qweight.shape == (K // 8, N) and qweight.dtype == torch.int32, (tuple(qweight.shape), K, N)
    assert K % group_size == 0 and K % 8 == 0, (K, group_size)  # scales are read per element: any group size
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if skinny and 1 <= M <= quant_gemv.MAX_M and quant_gemv.w4_configs(M, K, group_size):
        return quant_gemv.w4a16_skinny(x2, qweight, scales, zeros, group_size).reshape(*x.shape[:-1], N)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    BM, BN, BK = _blocks(M)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _w4a16_kernel[grid](x2, qweight, scales, zeros, y, M, N, K, qweight.stride(0), qweight.stride(1), scales.stride(0),
                        scales.stride(1), group_size, BM, BN, BK, False)
    return y.reshape(*x.shape[:-1], N)


def w4a16_matmul_gemv(x: torch.Tensor, qw: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                      skinny: bool = True) -> torch.Tensor:
    """w4a16_matmul on quant_gemv's GEMV layout (pack_w4_gemv: qw int32 (N, K / 8), scales and zeros
    (N, K / 128), group size 128): M <= 16 -> quant_gemv.w4a16_gemv, larger M -> kernels.gemv4's tc tiles
    (skinny=False: the SHUF tiles here, every M)."""
    K = x.shape[-1]
    N = qw.shape[0]
    assert qw.shape == (N, K // 8) and qw.dtype == torch.int32 and K % quant_gemv.GEMV_GS == 0, (tuple(qw.shape), K)
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if skinny and 1 <= M <= quant_gemv.MAX_M:
        return quant_gemv.w4a16_gemv(x2, qw, scales, zeros).reshape(*x.shape[:-1], N)
    if skinny:  # M > 16: kernels.gemv4's tc tiles (rows read along K; tuned up to 128 tokens)
        from kernels.gemv4 import w4a16_gemv_tc

        return w4a16_gemv_tc(x2, qw, scales, zeros).reshape(*x.shape[:-1], N)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    BM, BN, BK = _blocks(M)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _w4a16_kernel[grid](x2, qw, scales, zeros, y, M, N, K, 1, qw.stride(0), 1, scales.stride(0),
                        quant_gemv.GEMV_GS, BM, BN, BK, True)
    return y.reshape(*x.shape[:-1], N)


def w8a16_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, skinny: bool = True) -> torch.Tensor:
    """x (..., K) fp16/bf16, w int8 (N, K), scale (N,) -> (..., N) in x's dtype (skinny as w4a16_matmul)."""
    K = x.shape[-1]
    N = w.shape[0]
    x2 = x.reshape(-1, K).contiguous()
    M = x2.shape[0]
    if skinny and M == 1 and K % 256 == 0 and w.is_contiguous():  # kernels/gemv8.py: row-streaming GEMV (+ split-K)
        from kernels.gemv8 import w8a16_gemv

        return w8a16_gemv(x2, w, scale).reshape(*x.shape[:-1], N)
    if skinny and 1 <= M <= quant_gemv.MAX_M and quant_gemv.w8_configs(M, K) and w.is_contiguous():
        return quant_gemv.w8a16_skinny(x2, w, scale).reshape(*x.shape[:-1], N)
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    BM, BN, BK = _blocks(M)
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _w8a16_kernel[grid](x2, w.contiguous(), scale, y, M, N, K, BM, BN, BK)
    return y.reshape(*x.shape[:-1], N)


def pack_w4(q: torch.Tensor) -> torch.Tensor:
    """Codes (N, K) in 0..15 -> int32 (K / 8, N), the kernel's (and GPTQ's) packing along K."""
    N, K = q.shape
    v = q.T.to(torch.int64).reshape(K // 8, 8, N)  # (words, 8 codes, N)
    shifts = (torch.arange(8, device=q.device, dtype=torch.int64) * 4)[None, :, None]
    words = (v << shifts).sum(1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)


def w4a16_reference(x, q, scales, zeros, group_size):
    """fp32 x @ dequantized W^T: codes q (N, K), scales/zeros (K / gs, N)."""
    g = torch.arange(q.shape[1], device=q.device) // group_size
    w = (q.float() - zeros.float()[g].T) * scales.float()[g].T  # (N, K)
    return x.float() @ w.T


def w8a16_reference(x, w, scale):
    """fp32 x @ (w * scale[:, None])^T."""
    return x.float() @ (w.float() * scale.float()[:, None]).T
