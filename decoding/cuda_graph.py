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


class SimulatedGraph:
    """What simulate_capture returns in place of a CUDAGraph: replay() reruns the captured function and
    writes its result into the static output tensors of the capture, as a real replay does."""

    def __init__(self, fn: Callable, out):
        self._fn, self._out = fn, out

    def replay(self) -> None:
        """Run the step again; its outputs land in the tensors the capture returned (earlier views change)."""
        res = self._fn()
        outs, ress = (self._out, res) if isinstance(res, (tuple, list)) else ((self._out,), (res,))
        for o, r in zip(outs, ress):
            o.copy_(r)


def simulate_capture(fn: Callable[[], T], device=None, warmup: int = 3, pool=None) -> tuple[SimulatedGraph, T]:
    """capture_graph's semantics on any device, for CPU tests of graphed code paths.

    Like capture_graph it runs fn warmup + 1 times at capture (with every side effect: a model step
    writes its KV cache), returns static output tensors that each replay() overwrites in place, and
    replays read the inputs from the tensors fn owns as they are at replay time. What it cannot mimic:
    Python values fn reads are re-read on each replay here, but frozen at capture in a real graph.
    """
    for _ in range(warmup):
        fn()
    out = fn()
    return SimulatedGraph(fn, out), out
