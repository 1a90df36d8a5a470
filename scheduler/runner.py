"""ModelRunner: turns a SchedulerOutput into one forward over a PagedKVCache, and samples.

It sees block ids (inside ScheduledRequest) but never the BlockPool; the scheduler
never sees its tensors.
"""

from __future__ import annotations

from typing import Optional

import torch

from cache.block_pool import NULL_BLOCK_ID
from cache.kv_manager import slot_mapping
from cache.paged_cache import PagedAttentionMetadata, PagedKVCache
from decoding.sampling import sample
from scheduler.outputs import ModelRunnerOutput, NewRequestData, SchedulerOutput


class ModelRunner:
    def __init__(self, model, paged_kv: PagedKVCache, graphs=None):
        """graphs: a scheduler.graphs.DecodeGraphs to replay decode-only steps (None: all eager)."""
        self.model = model
        self.graphs = graphs
        self.kv = paged_kv
        self.device = paged_kv.k[0].device
        self.block_size = paged_kv.block_size
        model.setup_paged_caches(paged_kv)
        self.params: dict[str, NewRequestData] = {}
        self.generators: dict[str, Optional[torch.Generator]] = {}

    def close(self) -> None:
        self.model.remove_caches()

    def _tensor(self, values, dtype=torch.long) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=self.device)

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        for rid in sched.finished_request_ids:
            self.params.pop(rid, None)
            self.generators.pop(rid, None)
        for new in sched.new_requests:
            self.params[new.request_id] = new
            self.generators[new.request_id] = (None if new.seed is None else
                                               torch.Generator(device=self.device).manual_seed(new.seed))
        if not sched.scheduled:
            return ModelRunnerOutput()
        self.kv.copy_blocks(sched.block_copies)  # copy-on-write before this step's writes

        decode_only = all(len(s.token_ids) == 1 for s in sched.scheduled)
        if (self.graphs is not None and decode_only and all(s.sample for s in sched.scheduled)
                and self.graphs.bucket_for(len(sched.scheduled)) is not None):
            return ModelRunnerOutput(self._sample(sched, self._graph_step(sched)))
        ids, positions, slots, qsl, seq_lens, out_rows = [], [], [], [0], [], []
        max_blocks = max(len(s.block_ids) for s in sched.scheduled)
        table = []
        for s in sched.scheduled:
            n, end = len(s.token_ids), s.start_pos + len(s.token_ids)
            ids.extend(s.token_ids)
            positions.extend(range(s.start_pos, end))
            slots.extend(slot_mapping(s.block_ids, s.start_pos, end, self.block_size))
            qsl.append(qsl[-1] + n)
            seq_lens.append(end)
            table.append(s.block_ids + [NULL_BLOCK_ID] * (max_blocks - len(s.block_ids)))
            if s.sample:
                out_rows.append(qsl[-1] - 1)
        meta = PagedAttentionMetadata(
            positions=self._tensor(positions), slot_mapping=self._tensor(slots),
            block_tables=self._tensor(table, torch.int32), seq_lens=self._tensor(seq_lens, torch.int32),
            query_start_loc=qsl, seq_lens_host=seq_lens,
            decode_only=decode_only)
        self.kv.bind(meta)
        try:
            logits = self.model(self._tensor(ids)[None], meta.positions, self._tensor(out_rows))[0]  # (K, V)
        finally:
            self.kv.bind(None)
        return ModelRunnerOutput(self._sample(sched, logits))

    def _graph_step(self, sched: SchedulerOutput) -> torch.Tensor:
        """Logits (R, V) of a decode-only step, replayed from the CUDA graph of its bucket."""
        reqs = sched.scheduled
        positions = [s.start_pos for s in reqs]
        slots = [slot_mapping(s.block_ids, p, p + 1, self.block_size)[0] for s, p in zip(reqs, positions)]
        return self.graphs.run([s.token_ids[0] for s in reqs], positions, slots,
                               [s.block_ids for s in reqs], [p + 1 for p in positions])

    def _sample(self, sched: SchedulerOutput, logits: torch.Tensor) -> dict[str, int]:
        rids = [s.request_id for s in sched.scheduled if s.sample]
        greedy = logits.argmax(dim=-1).tolist()  # (K,)
        out = {}
        for row, rid in enumerate(rids):
            p = self.params[rid]
            if p.temperature == 0.0:
                out[rid] = greedy[row]
            else:
                out[rid] = int(sample(logits[row:row + 1], p.temperature, p.top_k, p.top_p,
                                      self.generators[rid])[0])
        return out
