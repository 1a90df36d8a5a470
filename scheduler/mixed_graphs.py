"""Piecewise CUDA graphs for the engine's mixed steps (prefill chunks, with or without decodes).

A step with prefill tokens cannot replay one whole graph: its attention depends on per-step host
metadata (which rows decode, the prefills' lengths, the keys gathered for them). So, as vLLM v1
does by splitting its torch.compile graph at the attention op, the forward is captured in pieces
that end at each attention call: piece 0 is the embedding and layer 0 up to its attention (norm,
qkv, RoPE + cache write), piece l is layer l-1's o_proj and MLP plus layer l up to its attention,
the last piece the final norm and the LM head. Between two pieces the attention runs eagerly
(FlashFace's mixed path over this step's FlashPlan), reading q from the buffer the pieces were
captured to write and writing the buffer the next piece was captured to read. A mixed step's host
cost goes from the eager forward's Python (~0.8 ms a layer on the H200) to one replay and one
attention call a layer.

Buckets are token counts: a step of N tokens is padded to the next bucket Nb >= N. Padding rows
are token 0 at position 0 writing their K/V into the null block's slot 0 (never read as a real
token); attention never writes their output rows, which keep finite stale values. Logits are
computed for `out_index` rows only (max_num_seqs of them, padded with row 0, dropped). Steps longer
than the largest bucket, or with more output rows than max_num_seqs (speculative verifies), run
eagerly.

`simulate=True` (CPU tests, Triton's interpreter) keeps every static buffer and the per-layer
attention call of the replay but runs the pieces eagerly: the bookkeeping is tested, not CUDA.
"""

from __future__ import annotations

import time
from typing import Optional

import torch

from cache.block_pool import NULL_BLOCK_ID
from cache.paged_cache import PagedKVCache, build_metadata

DEFAULT_TOKEN_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048)


class _Bucket:
    """Static inputs of one token bucket and its pieces."""

    def __init__(self, size: int, rows: int, block_size: int, device):
        self.size = size
        self.ids = torch.zeros(1, size, dtype=torch.long, device=device)
        self.out_index = torch.zeros(rows, dtype=torch.long, device=device)
        # The warm-up (and capture) step: one prompt of `size` tokens over null blocks. After the
        # capture its positions and slots become the padding values; each run overwrites them.
        self.meta = build_metadata([[NULL_BLOCK_ID] * -(-size // block_size)], [0], [size], block_size, device)
        self.pieces: list = []  # CUDAGraphs (simulate: none)
        self.holes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (k_cache, v_cache) of each attention
        self.logits: Optional[torch.Tensor] = None  # (rows, V), rewritten by every run


class _Recorder:
    """face.piecewise during a capture: each attention call copies q into the shared buffer, ends
    the graph being captured and begins the next; what it returns is the output buffer."""

    def __init__(self, qbuf: torch.Tensor, outbuf: torch.Tensor, pool):
        self.qbuf, self.outbuf, self.pool = qbuf, outbuf, pool
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self.holes: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.capturing = False

    def begin(self) -> None:
        g = torch.cuda.CUDAGraph()
        g.capture_begin(pool=self.pool)
        self.graphs.append(g)
        self.capturing = True

    def end(self) -> None:
        if self.capturing:
            self.capturing = False
            self.graphs[-1].capture_end()

    def attend(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> torch.Tensor:
        n = q.shape[2]
        self.qbuf[:n].copy_(q[0].transpose(0, 1))  # (N, Hq, D): the last op of this piece
        self.end()
        self.holes.append((k_cache, v_cache))
        self.begin()
        return self.outbuf[:n].transpose(0, 1)[None]  # (1, Hq, N, D): what the next piece reads


class _Live:
    """face.piecewise of a simulated replay: the same buffers, the attention run in place."""

    def __init__(self, graphs: "MixedGraphs", plan):
        self.graphs, self.plan = graphs, plan

    def attend(self, q, k_cache, v_cache):
        n = q.shape[2]
        g = self.graphs
        g.qbuf[:n].copy_(q[0].transpose(0, 1))
        g.attend(k_cache, v_cache, self.plan)
        return g.outbuf[:n].transpose(0, 1)[None]


class MixedGraphs:
    """Captures and replays mixed steps of a model over a PagedKVCache, by token bucket."""

    def __init__(self, model, face, kv: PagedKVCache, max_num_seqs: int, max_num_batched_tokens: int,
                 pool=None, buckets: tuple[int, ...] = DEFAULT_TOKEN_BUCKETS, simulate: bool = False):
        self.model, self.face, self.kv = model, face, kv
        self.device = kv.k[0].device
        self.block_size = kv.block_size
        self.simulate = simulate
        limit = min(max_num_batched_tokens, max(buckets))
        self.buckets = tuple(b for b in buckets if b < limit) + (limit,)
        self.rows = max_num_seqs  # logits rows of a replayed step
        self.pool = pool
        n_kv, d = kv.k[0].shape[2], kv.k[0].shape[3]
        hq = n_kv * (model.config.n_heads // model.config.n_kv_heads)  # this rank's query heads
        # One q and one attention-output buffer for every layer and bucket (pieces run in order).
        self.qbuf = torch.zeros(limit, hq, d, dtype=kv.k[0].dtype, device=self.device)
        self.outbuf = torch.zeros_like(self.qbuf)
        self._buckets: dict[int, _Bucket] = {}
        self.capture_s = 0.0
        self.null_slot = NULL_BLOCK_ID * self.block_size

    def fits(self, num_tokens: int, num_rows: int) -> bool:
        """Whether a step of num_tokens tokens and num_rows logits rows replays (else: eager)."""
        return num_tokens <= self.buckets[-1] and num_rows <= self.rows

    def bucket_for(self, num_tokens: int) -> int:
        return next(b for b in self.buckets if b >= num_tokens)

    def capture_all(self) -> float:
        """Capture every bucket now (largest first); returns the seconds it took (also in capture_s)."""
        t0 = self.capture_s
        for size in sorted(self.buckets, reverse=True):
            if size not in self._buckets:
                self._buckets[size] = self._capture(size)
        return self.capture_s - t0

    def _forward(self, b: _Bucket) -> torch.Tensor:
        return self.model(b.ids, b.meta.positions, b.out_index)[0]  # (rows, V)

    def _capture(self, size: int) -> _Bucket:
        t0 = time.perf_counter()
        b = _Bucket(size, self.rows, self.block_size, self.device)
        b.meta.plan = self.face.plan(b.meta)
        self.kv.bind(b.meta)
        try:
            with torch.no_grad():
                if self.simulate:
                    b.logits = self._forward(b)
                else:
                    b.pieces, b.holes, b.logits = self._capture_pieces(b)
        finally:
            self.kv.bind(None)
        b.meta.positions.zero_()
        b.meta.slot_mapping.fill_(self.null_slot)
        if not self.simulate:
            torch.cuda.synchronize(self.device)
        self.capture_s += time.perf_counter() - t0
        return b

    def _capture_pieces(self, b: _Bucket):
        current = torch.cuda.current_stream(self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(current)
        rec = _Recorder(self.qbuf, self.outbuf, self.pool)
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside the capture: cuBLAS, Triton JIT and autotune
                self._forward(b)
            stream.synchronize()
            self.face.piecewise = rec
            try:
                rec.begin()
                logits = self._forward(b)
                rec.end()
            finally:
                self.face.piecewise = None
                rec.end()  # a capture that raised is closed before the error goes up
        current.wait_stream(stream)
        assert len(rec.graphs) == len(rec.holes) + 1, "one piece more than attention calls"
        return rec.graphs, rec.holes, logits

    def attend(self, k_cache: torch.Tensor, v_cache: torch.Tensor, plan) -> None:
        """One layer's attention of a replayed step: qbuf rows -> outbuf rows (the plan's rows only)."""
        from model.paged_attention import paged_attention_rows

        paged_attention_rows(self.qbuf, k_cache, v_cache, plan, self.face.window, self.outbuf)

    def _pad(self, b: _Bucket, n: int) -> None:
        """Rows n.. of the bucket become padding: a previous step's real slots must not be written again."""
        if n < b.size:
            b.ids[0, n:].zero_()
            b.meta.positions[n:].zero_()
            b.meta.slot_mapping[n:].fill_(self.null_slot)

    def run(self, ids: torch.Tensor, meta, out_rows: torch.Tensor) -> torch.Tensor:
        """Logits (len(out_rows), V) of one mixed step: ids (N,) and meta (with meta.plan) as the eager
        forward takes them; out_rows (K,) the rows that get logits. Valid until the next run."""
        n, k = ids.numel(), out_rows.numel()
        assert self.fits(n, k), f"a step of {n} tokens and {k} rows does not fit the mixed graphs"
        size = self.bucket_for(n)
        if size not in self._buckets:
            self._buckets[size] = self._capture(size)
        b = self._buckets[size]
        b.ids[0, :n].copy_(ids)
        b.meta.positions[:n].copy_(meta.positions)
        b.meta.slot_mapping[:n].copy_(meta.slot_mapping)
        self._pad(b, n)
        b.out_index[:k].copy_(out_rows)
        b.out_index[k:].zero_()
        if self.simulate:
            self.face.piecewise = _Live(self, meta.plan)
            self.kv.bind(b.meta)  # the pieces' cache writes read the bucket's slots
            try:
                b.logits.copy_(self._forward(b))
            finally:
                self.face.piecewise = None
                self.kv.bind(None)
        else:
            for piece, (k_cache, v_cache) in zip(b.pieces, b.holes):
                piece.replay()
                self.attend(k_cache, v_cache, meta.plan)
            b.pieces[-1].replay()
        return b.logits[:k]
