"""GPTQ and AWQ (GEMM) int32 packing, as the checkpoints other runtimes read (vLLM, TGI, transformers).

GPTQ, packed as AutoGPTQ's QuantLinear.pack (auto_gptq/nn_modules/qlinear/qlinear_cuda_old.py,
AutoGPTQ/AutoGPTQ@c80855e25b165006688a642beaf0ee4f8400f27f), checkpoint_format "gptq" (v1):
  qweight int32 (in * bits / 32, out): word [r, o] holds codes of inputs r*pf .. r*pf+pf-1 of
          output o, input r*pf + j at bits [bits*j, bits*j + bits)   (pf = 32 / bits)
  qzeros  int32 (n_groups, out * bits / 32): zero points packed the same way along outputs,
          each stored as (zero - 1) & maxq: the v1 off-by-one GPTQModel documents in
          convert_gptq_v1_to_v2_format_module (readers add 1 back). An asymmetric zero of 0
          (a group with no negative weight) is stored as maxq and read back as 0 here; readers
          that do not mask after adding 1 (AutoGPTQ's torch path) see maxq + 1 for it
  scales  fp16 (n_groups, out);  g_idx int32 (in,): the group of each input (act-order permutes)
  W[o, i] = scales[g_idx[i], o] * (q[i, o] - zero[g_idx[i], o])
AWQ GEMM, as AutoAWQ's WQLinear_GEMM.from_linear (awq/modules/linear/gemm.py,
casper-hansen/AutoAWQ@d9dc8e564fed1527be2a9d8d5c74daf3823c3203), 4 bits only:
  qweight int32 (in, out / 8): word [i, c] holds outputs c*8 + ORDER[k] at bits [4k, 4k + 4),
          ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
  qzeros  int32 (n_groups, out / 8): zero points, same interleave, stored as is
  scales  fp16 (n_groups, out); groups are contiguous (no g_idx)
"""

from __future__ import annotations

import torch

from quant.rtn import SUPPORTED_BITS, QuantConfigError, QuantizationError

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


class FormatError(QuantizationError):
    """A packed checkpoint tensor that disagrees with its quantization_config; one line naming it."""


def _to_int32(x: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> the int32 with the same bits."""
    return torch.where(x >= 2 ** 31, x - 2 ** 32, x).to(torch.int32)


def _pack(vals: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """Pack unsigned `bits`-bit vals along dim: element k of each run of 32/bits goes to bits [bits*k, ...)."""
    pf = 32 // bits
    v = vals.to(torch.int64).movedim(dim, -1)
    v = v.reshape(*v.shape[:-1], v.shape[-1] // pf, pf)  # (..., words, pf)
    if order is not None:
        v = v[..., list(order)]
    shifts = torch.arange(pf, dtype=torch.int64) * bits
    return _to_int32((v << shifts).sum(-1)).movedim(-1, dim).contiguous()


def _unpack(packed: torch.Tensor, bits: int, dim: int, order=None) -> torch.Tensor:
    """Inverse of _pack: int32 words -> unsigned codes (int64) along dim."""
    pf = 32 // bits
    p = (packed.to(torch.int64) & 0xFFFFFFFF).movedim(dim, -1)
    shifts = torch.arange(pf, dtype=torch.int64) * bits
    v = (p[..., None] >> shifts) & (2 ** bits - 1)  # (..., words, pf)
    if order is not None:
        inv = [0] * pf
        for k, o in enumerate(order):
            inv[o] = k
        v = v[..., inv]
    return v.reshape(*v.shape[:-2], -1).movedim(-1, dim)


def pack_gptq(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, g_idx: torch.Tensor,
              bits: int) -> dict[str, torch.Tensor]:
    """Our tensors (q (out, in) codes, scales/zeros (G, out), g_idx (in,)) -> GPTQ v1 tensors."""
    maxq = 2 ** bits - 1
    return {"qweight": _pack(q.T, bits, dim=0), "qzeros": _pack((zeros.long() - 1) & maxq, bits, dim=1),
            "scales": scales.half().contiguous(), "g_idx": g_idx.to(torch.int32).contiguous()}


def _check_shape(name: str, t: torch.Tensor, shape: tuple, cfg: str) -> None:
    if tuple(t.shape) != tuple(shape):
        raise FormatError(f"{name}: shape {tuple(t.shape)} disagrees with config.json ({cfg}), which implies "
                          f"{tuple(shape)}")


def unpack_gptq(t: dict[str, torch.Tensor], bits: int, group_size: int, in_f: int, out_f: int, name: str):
    """GPTQ v1 tensors of layer `name` -> (q uint8 (out, in), scales fp16, zeros uint8 (G, out), g_idx int32)."""
    if bits not in SUPPORTED_BITS:
        raise QuantConfigError(f"GPTQ checkpoint with bits={bits}; this loader reads {SUPPORTED_BITS}")
    gs = in_f if group_size == -1 else group_size
    cfg = f"bits={bits}, group_size={group_size}"
    n_groups = -(-in_f // gs)
    _check_shape(f"{name}.qweight", t["qweight"], (in_f * bits // 32, out_f), cfg)
    _check_shape(f"{name}.qzeros", t["qzeros"], (n_groups, out_f * bits // 32), cfg)
    _check_shape(f"{name}.scales", t["scales"], (n_groups, out_f), cfg)
    for k in ("qweight", "qzeros"):
        if t[k].dtype != torch.int32:
            raise FormatError(f"{name}.{k} has dtype {t[k].dtype}; GPTQ packs int32")
    g_idx = t.get("g_idx")
    if g_idx is None:
        g_idx = torch.arange(in_f, dtype=torch.int32) // gs
    _check_shape(f"{name}.g_idx", g_idx, (in_f,), cfg)
    if int(g_idx.min()) < 0 or int(g_idx.max()) >= n_groups:
        raise FormatError(f"{name}.g_idx holds groups outside 0..{n_groups - 1}")
    maxq = 2 ** bits - 1
    q = _unpack(t["qweight"], bits, dim=0).T  # (out, in)
    zeros = (_unpack(t["qzeros"], bits, dim=1) + 1) & maxq  # v1 stores zero - 1
    return q.to(torch.uint8).contiguous(), t["scales"].half(), zeros.to(torch.uint8), g_idx.to(torch.int32)


def pack_awq(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> dict[str, torch.Tensor]:
    """Our 4-bit tensors (q (out, in), scales/zeros (G, out), contiguous groups) -> AWQ GEMM tensors."""
    return {"qweight": _pack(q.T, 4, dim=1, order=AWQ_ORDER), "qzeros": _pack(zeros, 4, dim=1, order=AWQ_ORDER),
            "scales": scales.half().contiguous()}


def unpack_awq(t: dict[str, torch.Tensor], bits: int, group_size: int, in_f: int, out_f: int, name: str):
    """AWQ GEMM tensors -> (q uint8 (out, in), scales fp16, zeros uint8 (G, out), g_idx int32)."""
    if bits != 4:
        raise QuantConfigError(f"AWQ checkpoint with bits={bits}; the GEMM layout holds 4-bit weights only")
    gs = in_f if group_size == -1 else group_size
    if in_f % gs:
        raise FormatError(f"{name}: group_size={group_size} does not divide in_features={in_f}")
    cfg = f"bits={bits}, group_size={group_size}"
    _check_shape(f"{name}.qweight", t["qweight"], (in_f, out_f // 8), cfg)
    _check_shape(f"{name}.qzeros", t["qzeros"], (in_f // gs, out_f // 8), cfg)
    _check_shape(f"{name}.scales", t["scales"], (in_f // gs, out_f), cfg)
    q = _unpack(t["qweight"], 4, dim=1, order=AWQ_ORDER).T
    zeros = _unpack(t["qzeros"], 4, dim=1, order=AWQ_ORDER)
    g_idx = (torch.arange(in_f) // gs).to(torch.int32)
    return q.to(torch.uint8).contiguous(), t["scales"].half(), zeros.to(torch.uint8), g_idx


FORMATS = {"gptq": (("qweight", "qzeros", "scales", "g_idx"), unpack_gptq),
           "awq": (("qweight", "qzeros", "scales"), unpack_awq)}


def hf_quant_config(fmt: str, bits: int, group_size: int, sym: bool, desc_act: bool, damp: float = 0.01) -> dict:
    """The quantization_config block of config.json for a GPTQ or AWQ checkpoint."""
    if fmt == "gptq":
        return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": desc_act, "sym": sym,
                "damp_percent": damp, "true_sequential": True, "static_groups": False,
                "checkpoint_format": "gptq", "lm_head": False}
    if fmt == "awq":
        return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": not sym,
                "version": "gemm"}
    raise QuantConfigError(f"unknown checkpoint format {fmt!r}; expected gptq or awq")
