"""Capturing a step into a CUDA graph: the one helper the engine, FastGenerator and the benches share.

It lives in decoding/ because that is the lowest package that runs model steps (FastGenerator)
and sits below scheduler/ and bench/, its other users; it imports nothing of ours.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def capture_graph(fn: Callable[[], T], device, warmup: int = 3, pool=None) -> tuple[torch.cuda.CUDAGraph, T]:
    """Warm fn up on a side stream, capture one call, return (graph, what that call returned).

    pool: a torch.cuda.graph_pool_handle() shared by graphs that never replay at once (capture the
    largest first): their intermediates share one allocation instead of one each.

    The warm-up calls run outside the capture (cuBLAS handles, Triton autotuning and JIT,
    torch.compile); the returned outputs are static tensors that every graph.replay()
    rewrites in place. fn must read its inputs from tensors it owns (fill them, then replay).
    """
    device = torch.device(device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    # No autograd, whoever calls: a replay never records it, and the model's inference path
    # (fused add + RMSNorm, fused RoPE + cache write) runs only with grad off. An engine that
    # captured at start-up with grad on baked the slower training-form blocks into its graphs.
    with torch.no_grad():
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = fn()
    return graph, out
