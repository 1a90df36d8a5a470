"""ModelRunner: turns a SchedulerOutput into one forward over a PagedKVCache, and samples.

It sees block ids (inside ScheduledRequest) but never the BlockPool; the scheduler
never sees its tensors. A step is build_metadata -> plan (the attention face's, once per
step) -> bind -> forward -> sample.

Failures: what one request owns (its generator, its own sampling call) is caught per request
and reported in ModelRunnerOutput.errors, so the rest of the batch still gets its tokens. A
failure of the whole step (the forward, the batched greedy pick) raises to the engine.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from cache.kv_manager import slot_mapping
from cache.paged_cache import PagedKVCache, build_metadata
from decoding.ranges import phase
from decoding.sampling import sample, sample_batch
from scheduler.outputs import ModelRunnerOutput, NewRequestData, SchedulerOutput
from scheduler.speculative import output_rows, verify_output


class ModelRunner:
    def __init__(self, model, paged_kv: PagedKVCache, face, graphs=None, mixed=None):
        """model already set up over paged_kv (`face = model.setup_paged_caches(paged_kv)`);
        graphs: a scheduler.graphs.DecodeGraphs to replay decode-only steps (None: all eager);
        mixed: a scheduler.mixed_graphs.MixedGraphs to replay the other steps piecewise."""
        self.model = model
        self.face = face
        self.graphs = graphs
        self.mixed = mixed
        self.kv = paged_kv
        self.device = paged_kv.k[0].device
        self.block_size = paged_kv.block_size
        self.params: dict[str, NewRequestData] = {}
        self.generators: dict[str, Optional[torch.Generator]] = {}
        self.errors: dict[str, str] = {}  # this step's per-request failures (request id -> message)

    def close(self) -> None:
        """Take the paged caches out of the model (the KV memory goes with the engine)."""
        self.model.remove_caches()

    @torch.inference_mode()
    def execute(self, sched: SchedulerOutput) -> ModelRunnerOutput:
        """Run one scheduled step and return the token sampled for each request that samples
        (and, in `errors`, the requests whose own generator or sampling raised)."""
        for rid in sched.finished_request_ids:
            self.params.pop(rid, None)
            self.generators.pop(rid, None)
        self.errors = errors = {}
        for new in sched.new_requests:
            self.params[new.request_id] = new
            self.generators[new.request_id] = _guarded(errors, new.request_id, self._generator, new.seed)
        if not sched.scheduled:
            return ModelRunnerOutput(errors=errors)
        self.kv.copy_blocks(sched.block_copies)  # copy-on-write before this step's writes

        reqs = sched.scheduled
        if (self.graphs is not None and all(len(s.token_ids) == 1 and s.sample for s in reqs)
                and self.graphs.bucket_for(len(reqs)) is not None):
            with phase("forward_graph"):  # stage the inputs, replay
                logits = self._graph_step(sched)
        else:
            with phase("prepare"):
                meta = build_metadata([s.block_ids for s in reqs], [s.start_pos for s in reqs],
                                      [len(s.token_ids) for s in reqs], self.block_size, self.device)
                meta.plan = self.face.plan(meta)  # once per step, shared by every layer
                qsl = meta.query_start_loc
                ids = torch.tensor([t for s in reqs for t in s.token_ids], dtype=torch.long, device=self.device)
                # (K,): each sampling request's last row (a speculating request's last k + 1)
                out_rows = torch.tensor(output_rows(reqs, qsl), dtype=torch.long, device=self.device)
            if (self.mixed is not None and meta.plan is not None  # decode-only steps have their own graphs
                    and self.mixed.fits(ids.numel(), out_rows.numel())):
                with phase("forward_mixed_graph"):  # piecewise graphs, attention eager between them
                    logits = self.mixed.run(ids, meta, out_rows)
            else:
                self.kv.bind(meta)
                try:
                    with phase("forward_eager"):
                        logits = self.model(ids[None], meta.positions, out_rows)[0]  # (K, V)
                finally:
                    self.kv.bind(None)
        with phase("sample"):
            if any(s.draft_token_ids for s in reqs):
                return verify_output(self, sched, logits)  # scheduler/speculative.py
            return self._output(sched, logits)

    def _graph_step(self, sched: SchedulerOutput) -> torch.Tensor:
        """Logits (R, V) of a decode-only step, replayed from the CUDA graph of its bucket."""
        reqs = sched.scheduled
        positions = [s.start_pos for s in reqs]
        slots = [slot_mapping(s.block_ids, p, p + 1, self.block_size)[0] for s, p in zip(reqs, positions)]
        return self.graphs.run([s.token_ids[0] for s in reqs], positions, slots,
                               [s.block_ids for s in reqs], [p + 1 for p in positions])

    def _output(self, sched: SchedulerOutput, logits: torch.Tensor) -> ModelRunnerOutput:
        """Sampled tokens, this step's errors, and the logprobs of the requests that asked."""
        tokens = self._sample(sched, logits)
        out = ModelRunnerOutput(tokens, self.errors)
        rows = [(row, s.request_id) for row, s in enumerate(s for s in sched.scheduled if s.sample)
                if s.request_id in tokens and self.params[s.request_id].logprobs is not None]
        if rows:  # log_softmax of the raw logits (before temperature/top-k/top-p), fp32
            lp = torch.log_softmax(logits[[r for r, _ in rows]].float(), dim=-1)  # (R, V)
            picked = lp[torch.arange(len(rows)), torch.tensor([tokens[rid] for _, rid in rows])].tolist()
            k = max(self.params[rid].logprobs for _, rid in rows)
            top_v, top_i = lp.topk(k, dim=-1) if k else (lp[:, :0], lp[:, :0])  # (R, k)
            top_v, top_i = top_v.tolist(), top_i.tolist()
            for j, (_, rid) in enumerate(rows):
                n = self.params[rid].logprobs
                out.logprobs[rid] = (picked[j], list(zip(top_i[j][:n], top_v[j][:n])))
        return out

    def _generator(self, seed: Optional[int]) -> Optional[torch.Generator]:
        return None if seed is None else torch.Generator(device=self.device).manual_seed(seed)

    def _sample(self, sched: SchedulerOutput, logits: torch.Tensor) -> dict[str, int]:
        """Every row greedy in one call (one transfer); then the sampling rows without a seed in
        one batched call (decoding.sample_batch: each row its own temperature, top-k, top-p), and
        the rows with a seed one by one with their own generator (reproducible whatever else runs).
        A request whose own sampling raises gets an entry in self.errors instead of a token."""
        errors = self.errors
        rids = [s.request_id for s in sched.scheduled if s.sample]
        greedy = sample(logits).tolist()  # (K,)
        out, batched, seeded = {}, [], []
        for row, rid in enumerate(rids):
            p = self.params[rid]
            if rid in errors:
                continue
            if p.temperature == 0.0:
                out[rid] = greedy[row]
            else:
                (seeded if self.generators[rid] is not None else batched).append((row, rid, p))
        if batched:
            try:
                out.update(zip([rid for _, rid, _ in batched], self._sample_rows(logits, batched).tolist()))
            except Exception:  # noqa: BLE001 - find the request that fails alone, below
                seeded = batched + seeded
        for row, rid, p in seeded:
            tok = _guarded(errors, rid, lambda: int(sample(logits[row:row + 1], p.temperature, p.top_k, p.top_p,
                                                           self.generators[rid])[0]))
            if rid not in errors:
                out[rid] = tok
        return out

    def _sample_rows(self, logits: torch.Tensor, rows: list) -> torch.Tensor:
        """Sample the given (row, request id, params) rows of logits in one call on the device."""
        settings = torch.tensor([[p.temperature, p.top_k or 0, 1.0 if p.top_p is None else p.top_p]
                                 for _, _, p in rows], dtype=torch.float64)
        if self.device.type == "cuda":
            settings = settings.pin_memory()
        settings = settings.to(self.device, non_blocking=True)
        index = torch.tensor([r for r, _, _ in rows], dtype=torch.long).to(self.device, non_blocking=True)
        return sample_batch(logits.index_select(0, index), settings[:, 0].float(), settings[:, 1].long(),
                            settings[:, 2].float())


def _guarded(errors: dict[str, str], request_id: str, fn: Callable, *args):
    """fn(*args); if it raises, None and errors[request_id] = what it raised (one request's failure)."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - reported on that request's output, the batch goes on
        errors[request_id] = f"{type(e).__name__}: {e}"
        return None
