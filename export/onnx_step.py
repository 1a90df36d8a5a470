"""ONNX export of the KV-cache decoder step, onnxruntime sessions, and the INT8 variant.

Graph (export/kv_step.py KVCacheStep, opset 18, torch.onnx.export with dynamo=True):
  inputs   input_ids (1, T) int64, input_pos (T,) int64,
           past_k, past_v (n_layers, 1, n_kv_heads, S, head_dim) float32
  outputs  logits (1, T, vocab) float32, present_k, present_v (same shape as past_*)
T is dynamic (prefill: the prompt; decode: 1); S, the cache length, is static.
INT8: onnxruntime.quantization.quantize_dynamic (int8 weights of MatMul/Gemm, per
channel; activations quantized per call), run by onnxruntime's CPU provider, with
reduce_range (7-bit weights): on CPUs without VNNI (AVX2) the u8 x s8 dot products of
full 8-bit weights saturate int16 pairs, measured 0.50 relative logits error and 62%
top-1 agreement against 0.13 and 100% with reduce_range (export/checks.py).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import torch

from export.checks import forced_logits
from export.kv_step import KVCacheStep, empty_caches, greedy_with_step

INPUTS = ["input_ids", "input_pos", "past_k", "past_v"]
OUTPUTS = ["logits", "present_k", "present_v"]


def unavailable(dtype: torch.dtype, device) -> Optional[str]:
    """Why this export cannot run for (dtype, device) here, or None when it can."""
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter)
    except ImportError as e:
        return f"not installed ({e.name})"
    if dtype != torch.float32 or torch.device(device).type != "cpu":
        return "export/onnx_step.py exports fp32 for onnxruntime's CPU provider: --device=cpu --dtype=fp32 only"
    return None


def export_onnx(model, path: str, max_len: int) -> str:
    """Export the fp32 step of a CPU model to `path` (an .onnx file, weights inline); return path."""
    model.setup_caches(1, max_len)
    step = KVCacheStep(model).eval()
    k, v = empty_caches(model, 1, max_len)
    args = (torch.zeros(1, 4, dtype=torch.long), torch.arange(4), k, v)
    T = torch.export.Dim("T", min=1, max=max_len)
    with torch.no_grad():
        return export_module(step, args, path, INPUTS, OUTPUTS, dynamic_shapes=({1: T}, {0: T}, None, None))


def export_module(module, args: tuple, path: str, input_names: list[str], output_names: list[str],
                  dynamic_shapes=None) -> str:
    """torch.onnx.export (dynamo, opset 18, weights inline) of any module to `path`, checked; return path.

    The exporter's passes log one INFO line per initializer (loud under absl): silenced here.
    """
    import onnx

    logging.disable(logging.INFO)
    try:
        prog = torch.onnx.export(module, args, input_names=input_names, output_names=output_names,
                                 dynamic_shapes=dynamic_shapes, dynamo=True, opset_version=18,
                                 external_data=False)
    finally:
        logging.disable(logging.NOTSET)
    prog.save(path)
    onnx.checker.check_model(path)
    return path


def quantize_onnx_int8(src: str, dst: str) -> str:
    """Dynamic INT8 quantization of src's MatMul weights (per channel) into dst."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True)
    return dst


class OrtStep:
    """(ids, pos, past_k, past_v) -> (logits, present_k, present_v) through onnxruntime CPU."""

    def __init__(self, path: str, threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0 = onnxruntime's default (all cores)
        self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])

    @staticmethod
    def feeds(ids, pos, k, v) -> dict:
        """The session's inputs as numpy arrays, from torch tensors (any device) or arrays."""
        def arr(x, dtype):
            return np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=dtype)

        return {"input_ids": arr(ids, np.int64), "input_pos": arr(pos, np.int64),
                "past_k": arr(k, np.float32), "past_v": arr(v, np.float32)}

    def __call__(self, ids, pos, k, v):
        """(logits, present_k, present_v) as numpy arrays."""
        return self.session.run(OUTPUTS, self.feeds(ids, pos, k, v))

    def bind(self, ids, pos, k, v):
        """A callable that runs these inputs (converted once, so a timed call is onnxruntime's
        alone) and returns the outputs as torch tensors; its arguments are ignored."""
        feeds = self.feeds(ids, pos, k, v)
        return lambda *_: [torch.from_numpy(a) for a in self.session.run(OUTPUTS, feeds)]


def _zero_caches(config, max_len: int) -> np.ndarray:
    return np.zeros((config.n_layers, 1, config.n_kv_heads, max_len, config.head_dim), dtype=np.float32)


def ort_greedy(path: str, config, prompt: list[int], n_new: int, max_len: int):
    """Greedy ids and per-step last logits from an exported step."""
    k = _zero_caches(config, max_len)
    return greedy_with_step(OrtStep(path), prompt, n_new, k, k.copy())


def ort_forced(path: str, config, prompt: list[int], tokens: list[int], max_len: int) -> torch.Tensor:
    """Teacher-forced logits (len(tokens), vocab) of an exported step (export/checks.py)."""
    k = _zero_caches(config, max_len)
    return forced_logits(OrtStep(path), prompt, tokens, k, k.copy())


def file_mb(path: str) -> float:
    """Size of the file at path in MB (1e6 bytes)."""
    return os.path.getsize(path) / 1e6
