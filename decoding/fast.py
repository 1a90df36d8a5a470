"""Fast static-cache decoding: fused projections, CUDA graphs per batch size, optional compile.

    gen = FastGenerator(model, max_batch_size=8, max_seq_len=512, cuda_graph=True, compile_mode=None)
    result = gen.generate(prompt_ids, max_new_tokens=256)   # decoding.generate.GenerationResult

The decode step (B tokens at one shared position over the StaticKVCache) is captured
once per batch size into a CUDA graph with static input buffers (decoding/cuda_graph.py),
then replayed: one launch per token instead of hundreds. With compile_mode set the step is
first compiled by torch.compile (Inductor fuses RoPE, the norms and the residual adds) and
the compiled step is captured the same way. Prefill runs eagerly. The loop around them
(sample, stop, time) is decoding.generate's decode_loop. Caches live as long as the
generator, so graphs stay valid across generate calls; writes past the prompt are
masked by position, so stale entries from an earlier call are never read.
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Optional, Sequence, Union

import torch

from cache.static_cache import StaticKVCache
from decoding.cuda_graph import capture_graph
from decoding.generate import ContextLengthError, GenerationResult, _sync, decode_loop, prompt_tensor


class _DecodeStep:
    """One step of a fixed batch size and width: static buffers, and a CUDA graph when asked.

    Width 1 is the decode step; width w > 1 feeds w consecutive tokens per row at positions
    pos..pos+w-1 (speculative verification, decoding/speculative.py) and returns every row's logits.
    """

    def __init__(self, fn: Callable, batch_size: int, device: torch.device, cuda_graph: bool, width: int = 1,
                 capture: Callable = capture_graph):
        self.fn = fn
        self.width = width
        self.ids = torch.zeros(batch_size, width, dtype=torch.long, device=device)
        self._offsets = torch.arange(width, dtype=torch.long, device=device)
        self.pos = self._offsets.clone()  # capture writes the cache at positions 0..width-1 (see step_for)
        self.graph = None
        self.logits = None
        if cuda_graph:  # logits (B, V) or (B, w, V): a static output buffer each replay rewrites
            self.graph, self.logits = capture(self._run, device)

    def _run(self) -> torch.Tensor:
        out = self.fn(self.ids, self.pos)  # (B, w, V)
        return out[:, -1] if self.width == 1 else out

    def __call__(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """Logits (B, V) of the tokens ids (B,) at position pos (width 1), or (B, w, V) of ids (B, w)
        at positions pos..pos+w-1. Valid until the next call."""
        self.ids.copy_(ids.view(self.ids.shape))
        if self.width == 1:
            self.pos.fill_(pos)
        else:
            torch.add(self._offsets, pos, out=self.pos)
        if self.graph is None:
            return self._run()
        self.graph.replay()
        return self.logits


@contextlib.contextmanager
def _cache_kept(model, width: int):
    """Restore positions 0..width-1 of every StaticKVCache of model on exit.

    Capturing a step runs it (warm-up and capture) with its static inputs at positions 0..width-1, which
    writes K/V there. A step built after a prefill (the speculative verify and draft widths are built on
    first use) would otherwise leave token 0's K/V over the prompt's first positions, and every later step
    attends to them: speculation diverged from plain greedy at token index 1 on the H200.
    """
    caches = [m for m in model.modules() if isinstance(m, StaticKVCache)]
    saved = [(c.k_cache[:, :, :width].clone(), c.v_cache[:, :, :width].clone()) for c in caches]
    try:
        yield
    finally:
        for c, (k, v) in zip(caches, saved):
            c.k_cache[:, :, :width].copy_(k)
            c.v_cache[:, :, :width].copy_(v)


class FastGenerator:
    """Greedy or sampled generation over a long-lived StaticKVCache with graphed decode steps."""

    def __init__(self, model, max_batch_size: int, max_seq_len: int, cuda_graph: bool = True,
                 compile_mode: Optional[str] = None, fuse: bool = True, capture: Callable = capture_graph):
        weight = model.model.embed_tokens.weight
        self.device = weight.device
        self.capture = capture  # capture_graph; tests pass decoding.cuda_graph.simulate_capture to run on CPU
        if cuda_graph and self.device.type != "cuda" and capture is capture_graph:
            raise ValueError("cuda_graph=True needs the model on a CUDA device; pass cuda_graph=False")
        self.model = model.eval()
        if fuse:
            model.fuse_projections()
        model.setup_caches(max_batch_size=max_batch_size, max_seq_len=max_seq_len)
        self.max_batch_size, self.max_seq_len = max_batch_size, max_seq_len
        self.cuda_graph, self.compile_mode = cuda_graph, compile_mode
        self._fn = model.forward
        if compile_mode:  # "default" or "max-autotune-no-cudagraphs"; the graph is ours
            self._fn = torch.compile(model.forward, mode=compile_mode, fullgraph=True, dynamic=False)
        self._steps: dict = {}  # batch size (decode) or (batch size, width) -> _DecodeStep
        self.capture_s: dict = {}  # the same keys -> seconds to compile/capture that step

    def close(self) -> None:
        """Drop graphs and caches (frees the KV memory)."""
        self._steps.clear()
        self.model.remove_caches()

    def step_for(self, batch_size: int, width: int = 1) -> _DecodeStep:
        """The (captured) step of this batch size and width (1: decode), built on first use."""
        key = batch_size if width == 1 else (batch_size, width)
        if key not in self._steps:
            t0 = time.perf_counter()
            with torch.inference_mode(), _cache_kept(self.model, width):
                self._steps[key] = _DecodeStep(self._fn, batch_size, self.device, self.cuda_graph, width,
                                               self.capture)
            _sync(self.device)
            self.capture_s[key] = time.perf_counter() - t0
        return self._steps[key]

    @torch.inference_mode()
    def generate(self, prompt_ids: Union[Sequence[int], torch.Tensor], max_new_tokens: int,
                 temperature: float = 0.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                 seed: Optional[int] = None, eos_id: Optional[int] = None,
                 on_logits: Optional[Callable] = None) -> GenerationResult:
        """Generate max_new_tokens after prompt_ids ((B, T) equal-length rows, or one list).

        The loop is decoding.generate's (decode_loop): eos_id stops rows as generate does; without
        it every row runs max_new_tokens (fixed work, as a benchmark wants) with no host sync.
        on_logits(step, logits (B, V)) sees every step's logits (checks; costs a sync if it reads).
        """
        prompt = prompt_tensor(prompt_ids, max_new_tokens, self.device)
        B, T = prompt.shape
        if B > self.max_batch_size:
            raise ValueError(f"batch of {B} exceeds max_batch_size={self.max_batch_size}")
        if T + max_new_tokens > self.max_seq_len:
            raise ContextLengthError(f"prompt ({T}) + max_new_tokens ({max_new_tokens}) exceeds the "
                                     f"generator's max_seq_len={self.max_seq_len}")
        step = self.step_for(B)  # capture before timing starts
        return decode_loop(lambda: self.model(prompt, torch.arange(T, device=self.device))[:, -1],
                           lambda tokens, pos: step(tokens[:, pos], pos), prompt, max_new_tokens,
                           temperature, top_k, top_p, seed, eos_id, on_logits)
