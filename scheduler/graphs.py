"""CUDA graphs for the engine's decode-only steps, one per bucketed batch size (as vLLM does).

A decode-only step of R requests is padded to the next bucket Rb >= R and replayed from
a graph captured once for Rb. Everything the forward reads is a static buffer filled
before the replay: token ids, positions, slots to write, block tables (padded to the
widest table max_model_len allows) and sequence lengths. Padding rows write their K/V
into the null block (never read as a real token) and attend to one null position; their
logits are dropped. Steps with prefill tokens, or more requests than the largest bucket,
run eagerly.
"""

from __future__ import annotations

import time

import torch

from cache.block_pool import NULL_BLOCK_ID
from cache.paged_cache import PagedKVCache, build_metadata
from decoding.cuda_graph import capture_graph

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256)


class _Bucket:
    """Static inputs of one bucket and the graph that reads them."""

    def __init__(self, size: int, max_blocks: int, block_size: int, device):
        self.size = size
        self.ids = torch.zeros(1, size, dtype=torch.long, device=device)
        self.rows = torch.arange(size, dtype=torch.long, device=device)
        # Every row starts as padding: one token at position 0 written to the null block's slot 0,
        # tables of max_blocks null blocks, length 1. Its tensors are the graph's static inputs.
        self.meta = build_metadata([[NULL_BLOCK_ID]] * size, [0] * size, [1] * size, block_size, device,
                                   width=max_blocks)
        # One pinned host staging area, copied over in non-blocking transfers; filled through
        # numpy views (a row assignment from a list is ~1 us; a torch.tensor per row, ~8).
        self.host_long = torch.zeros(3, size, dtype=torch.long).pin_memory()
        self.host_tables = torch.zeros(size, max_blocks, dtype=torch.int32).pin_memory()
        self.host_lens = torch.zeros(size, dtype=torch.int32).pin_memory()
        self.np_long, self.np_tables, self.np_lens = (self.host_long.numpy(), self.host_tables.numpy(),
                                                      self.host_lens.numpy())
        self.graph = None
        self.logits = None


class DecodeGraphs:
    """Captures and replays decode steps of a model over a PagedKVCache."""

    def __init__(self, model, kv: PagedKVCache, max_model_len: int, max_num_seqs: int,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS):
        self.model, self.kv = model, kv
        self.device = kv.k[0].device
        self.block_size = kv.block_size
        self.max_blocks = -(-max_model_len // kv.block_size)
        self.buckets = tuple(b for b in buckets if b < max_num_seqs) + (max_num_seqs,)
        self._graphs: dict[int, _Bucket] = {}
        self.capture_s = 0.0
        # One memory pool for every bucket (steps replay one at a time; a step's logits are
        # sampled before the next replay), as vLLM shares one across its graphs.
        self.pool = torch.cuda.graph_pool_handle() if self.device.type == "cuda" else None
        # A typical serving length to tune the decode attention on: a quarter of the context.
        self.warm_len = max(1, min(self.max_blocks * self.block_size, max_model_len // 4))

    def capture_all(self) -> float:
        """Capture every bucket's graph now (largest first); returns the seconds it took (also in
        capture_s). Graphs live as long as the engine and are reused by every decode-only step."""
        t0 = self.capture_s
        for size in sorted(self.buckets, reverse=True):
            if size not in self._graphs:
                self._graphs[size] = self._capture(size)
        return self.capture_s - t0

    def bucket_for(self, num_requests: int):
        """The smallest bucket holding num_requests, or None (too many: run eagerly)."""
        return next((b for b in self.buckets if b >= num_requests), None)

    def _capture(self, size: int) -> _Bucket:
        t0 = time.perf_counter()
        b = _Bucket(size, self.max_blocks, self.block_size, self.device)
        # The warm-up runs Triton's autotuner for the decode attention kernel. On padding rows
        # (length 1) it times configs on no work and keeps one that is slow on real lengths (H200,
        # 64 rows of ~400 tokens: 46.2 us against 39.4 us tuned on real lengths). So the warm-up
        # rows read warm_len tokens of the null block (always allocated, never a request's); the
        # replays refill every length before they run.
        b.meta.seq_lens.fill_(self.warm_len)
        self.kv.bind(b.meta)  # decode-only: the flash face reads it with no plan
        try:
            # warm-up outside the capture: cuBLAS, Triton autotune and JIT
            b.graph, b.logits = capture_graph(lambda: self.model(b.ids, b.meta.positions, b.rows)[0], self.device,
                                              warmup=2, pool=self.pool)  # logits (size, V)
        finally:
            self.kv.bind(None)
        torch.cuda.synchronize(self.device)
        self.capture_s += time.perf_counter() - t0
        return b

    def run(self, ids: list[int], positions: list[int], slots: list[int], tables: list[list[int]],
            seq_lens: list[int]) -> torch.Tensor:
        """Logits (R, V) of one decode-only step of R requests (R <= max bucket). Valid until the next run."""
        r = len(ids)
        size = self.bucket_for(r)
        if size not in self._graphs:
            self._graphs[size] = self._capture(size)
        b = self._graphs[size]
        fill_host(b.np_long, b.np_tables, b.np_lens, ids, positions, slots, tables, seq_lens,
                  NULL_BLOCK_ID, self.block_size)
        m = b.meta
        b.ids[0].copy_(b.host_long[0], non_blocking=True)
        m.positions.copy_(b.host_long[1], non_blocking=True)
        m.slot_mapping.copy_(b.host_long[2], non_blocking=True)
        m.block_tables.copy_(b.host_tables, non_blocking=True)
        m.seq_lens.copy_(b.host_lens, non_blocking=True)
        b.graph.replay()
        out = b.logits[:r]
        torch.cuda.current_stream(self.device).synchronize()  # the pinned buffers are reused next step
        return out


def fill_host(np_long, np_tables, np_lens, ids, positions, slots, tables, seq_lens, null_block: int,
              block_size: int) -> None:
    """Stage one step in a bucket's host arrays: rows past len(ids) are padding (null slot, length 1)."""
    r = len(ids)
    np_long[:, r:] = 0
    np_long[2, r:] = null_block * block_size
    np_long[0, :r] = ids
    np_long[1, :r] = positions
    np_long[2, :r] = slots
    np_tables.fill(null_block)
    for i, row in enumerate(tables):
        np_tables[i, :len(row)] = row
    np_lens[r:] = 1
    np_lens[:r] = seq_lens
