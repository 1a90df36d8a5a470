"""LLMEngine (schedule -> execute -> update) and the LLM front door.

    llm = LLM(model_or_path, policy="chunked", kv_budget_bytes=64 << 20)
    outs = llm.generate(["Hello", [1, 2, 3]], SamplingParams(max_tokens=32))
    outs[0].token_ids, outs[0].text, outs[0].ttft_s, outs[0].token_latencies_s
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import operator
import os
import sys
import time
from typing import Callable, Optional, Sequence, Union

import torch

from cache.block_pool import BlockPool
from cache.paged_cache import KVCapacity, PagedKVCache, bytes_per_token, kv_capacity, resolve_budget
from cache.window import max_tokens_held
from decoding.generate import ContextLengthError
from decoding.ranges import phase
from decoding.stopping import stop_string_hit
from scheduler.outputs import ModelRunnerOutput
from scheduler.params import Request, RequestStatus, SamplingParams
from scheduler.runner import ModelRunner
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.speculative import make_proposer

DEFAULT_GPU_MEMORY_FRACTION = 0.9  # of free memory after the weights, as vLLM's default
# On a CPU with no budget given: room for max_num_seqs full-length requests, but at most this
# many bytes. Uncapped, a 128k-context config asked 8.6 GB for a 1.4M-parameter model. 256 MiB
# still holds lab-small's 64 full 512-token requests (192 MiB) and two 128k-token requests of
# lab-draft. A request that cannot fit is refused at add time (KVCapacityError, naming the
# budget); pass kv_budget_bytes or num_blocks for more.
DEFAULT_CPU_KV_BUDGET_BYTES = 256 << 20

# The chunked policy's default token budget per step. On an H200 (Llama-3-8B shape, bf16, 2026-11-29)
# an eager mixed step of 512 tokens took 27.9 ms p50 for ~10 ms of matmul work: its cost is the
# eager forward's host path (~0.5 ms a layer), paid once per step whatever the chunk. 2048-token
# chunks pay it once per 4x the prefill. A CPU has no such fixed cost to amortise.
GPU_CHUNK_TOKENS = 2048
CPU_CHUNK_TOKENS = 512

log = logging.getLogger(__name__)


class RequestOutput:
    """A request's outputs so far (cumulative; final when `finished`). Times in seconds.

    token_ids and token_latencies_s are the request's lists as they stood at this step, sliced on
    first read: a step builds an output per running request, and copying every request's whole
    history each step was O(length) per token (the engine's lists are append-only, so the slice
    taken later is the same snapshot).
    """

    __slots__ = ("request_id", "prompt_token_ids", "finished", "finish_reason", "ttft_s", "num_preemptions",
                 "num_prefix_hit_tokens", "error", "logprobs", "text_fn", "_ids", "_lat", "__dict__")

    def __init__(self, request_id: str, prompt_token_ids: list[int], token_ids: Sequence[int], finished: bool,
                 finish_reason: Optional[str], ttft_s: Optional[float], token_latencies_s: Sequence[float] = (),
                 num_preemptions: int = 0, num_prefix_hit_tokens: int = 0, error: Optional[str] = None,
                 logprobs: Optional[list] = None, text_fn: Optional[Callable[[], Optional[str]]] = None, *,
                 _ids_view=None, _lat_view=None):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.finished = finished
        self.finish_reason = finish_reason  # "stop", "length", "abort", "error" (then `error` says why)
        self.ttft_s = ttft_s  # arrival -> first token
        self.num_preemptions = num_preemptions
        self.num_prefix_hit_tokens = num_prefix_hit_tokens
        self.error = error  # what raised, when finish_reason is "error"
        # With SamplingParams.logprobs: per generated token (its logprob, [(id, logprob)] of the top k).
        self.logprobs = logprobs
        self.text_fn = text_fn  # makes `text` on first read: a step decodes nothing nobody reads
        # (list, start, end) views, or the lists themselves
        self._ids = _ids_view if _ids_view is not None else (list(token_ids), 0, len(token_ids))
        self._lat = _lat_view if _lat_view is not None else (list(token_latencies_s), 0, len(token_latencies_s))

    @functools.cached_property
    def token_ids(self) -> list[int]:
        """Generated ids (a stop token is kept, as decoding.generate does)."""
        src, a, b = self._ids
        return src[a:b]

    @functools.cached_property
    def token_latencies_s(self) -> list[float]:
        """Gaps between consecutive tokens."""
        src, a, b = self._lat
        return src[a:b]

    @functools.cached_property
    def text(self) -> Optional[str]:
        """Decoded generated text, cut before a matched stop string; None without a tokenizer."""
        return None if self.text_fn is None else self.text_fn()

    def replace(self, **changes) -> "RequestOutput":
        """A copy with some public fields changed (e.g. finish_reason="error", error=why)."""
        out = object.__new__(RequestOutput)
        for name in RequestOutput.__slots__[:-1]:
            setattr(out, name, getattr(self, name))
        out.__dict__.update({k: v for k, v in self.__dict__.items() if k != "text"})
        for name, value in changes.items():
            if name not in RequestOutput.__slots__[:-3] and name not in ("token_ids", "token_latencies_s"):
                raise TypeError(f"RequestOutput has no field {name!r}")
            if name in ("token_ids", "token_latencies_s"):
                out.__dict__[name] = list(value)
            else:
                setattr(out, name, value)
        return out

    def _key(self) -> tuple:
        return (self.request_id, self.prompt_token_ids, self.token_ids, self.finished, self.finish_reason,
                self.ttft_s, self.token_latencies_s, self.num_preemptions, self.num_prefix_hit_tokens, self.error,
                self.logprobs)

    def __eq__(self, other) -> bool:
        return isinstance(other, RequestOutput) and self._key() == other._key()

    __hash__ = None

    def __repr__(self) -> str:
        return (f"RequestOutput(request_id={self.request_id!r}, token_ids={self.token_ids!r}, "
                f"finished={self.finished}, finish_reason={self.finish_reason!r}, error={self.error!r})")


def default_cpu_kv_budget(config, dtype: torch.dtype, max_num_seqs: int, max_model_len: int,
                          block_size: int) -> tuple[int, str]:
    """The KV bytes an engine on a CPU reserves when given no budget, and a phrase saying what
    was chosen: max_num_seqs full-length requests, capped at DEFAULT_CPU_KV_BUDGET_BYTES."""
    wanted = bytes_per_token(config, dtype) * (max_num_seqs * max_model_len + 2 * block_size)
    if wanted <= DEFAULT_CPU_KV_BUDGET_BYTES:
        return wanted, (f"CPU KV budget {wanted / 2**20:.1f} MiB (room for max_num_seqs={max_num_seqs} "
                        f"requests of max_model_len={max_model_len} tokens)")
    return DEFAULT_CPU_KV_BUDGET_BYTES, (
        f"CPU KV budget capped at {DEFAULT_CPU_KV_BUDGET_BYTES / 2**20:.0f} MiB (max_num_seqs={max_num_seqs} "
        f"requests of max_model_len={max_model_len} tokens would need {wanted / 2**20:.0f} MiB)")


class LLMEngine:
    """Owns the three nouns: a Scheduler (ids, counts, blocks), a ModelRunner (tensors), and
    the output step in between (stop strings, streaming, timings).

    On a GPU (defaults None = on there) it fuses the model's qkv and gate/up projections
    (`fuse_projections`; this changes the model's state-dict keys) and replays decode-only
    steps from CUDA graphs per bucketed batch size (`cuda_graph`; needs fp16/bf16 and head
    dim 64 or 128, the flash-decode kernel's), and steps with prefill tokens from piecewise graphs
    per token bucket, attention eager between the pieces (`mixed_cuda_graph`, default with
    cuda_graph; scheduler/mixed_graphs.py). Pass False to run those steps eagerly.
    admission_batch > 1: a full engine admits new prompts in groups (scheduler.SchedulerConfig).
    attention ("auto", "sdpa", "flash"; None reads $LAB_ATTENTION): the paged attention face,
    chosen once here (model/attention_backend.py). speculative ("ngram", "draft" with draft_model=
    a lab Transformer, or a decoding.speculative.SpeculativeConfig): decodes propose and verify k
    tokens a step (scheduler/speculative.py); the counts are on engine.scheduler.proposer.
    """

    def __init__(self, model, tokenizer=None, *, policy: str = "chunked", block_size: int = 16,
                 num_blocks: Optional[int] = None, kv_budget_bytes: Optional[int] = None,
                 gpu_memory_fraction: Optional[float] = None, kv_dtype: Optional[torch.dtype] = None,
                 max_num_seqs: int = 64, max_num_batched_tokens: Optional[int] = None,
                 max_model_len: Optional[int] = None, enable_prefix_caching: bool = True,
                 cuda_graph: Optional[bool] = None, fuse_projections: Optional[bool] = None,
                 admission_batch: int = 1, attention: Optional[str] = None, speculative=None, draft_model=None,
                 mixed_cuda_graph: Optional[bool] = None):
        self.model, self.tokenizer = model.eval(), tokenizer
        config = model.config
        weight = model.model.embed_tokens.weight
        device, dtype = weight.device, kv_dtype or weight.dtype
        max_model_len = max_model_len or config.max_seq_len
        if max_model_len > config.max_seq_len:
            raise ContextLengthError(f"max_model_len {max_model_len} exceeds the model context "
                                     f"{config.max_seq_len}")
        if max_num_batched_tokens is None:
            chunk = GPU_CHUNK_TOKENS if device.type == "cuda" else CPU_CHUNK_TOKENS
            max_num_batched_tokens = chunk if policy == "chunked" else max_model_len
        if num_blocks is not None:
            per_block = bytes_per_token(config, dtype) * block_size
            self.capacity = KVCapacity(num_blocks, block_size, per_block)
        else:
            chosen = None  # what the CPU default picked, said once on stderr
            if kv_budget_bytes is None and gpu_memory_fraction is None:
                if device.type == "cuda":
                    gpu_memory_fraction = DEFAULT_GPU_MEMORY_FRACTION
                else:
                    kv_budget_bytes, chosen = default_cpu_kv_budget(config, dtype, max_num_seqs, max_model_len,
                                                                    block_size)
            budget = resolve_budget(device, kv_budget_bytes, gpu_memory_fraction)
            self.capacity = kv_capacity(config, dtype, budget, block_size)
            if chosen:
                print(f"LLMEngine: {chosen} = {self.capacity.num_tokens} tokens of KV "
                      f"({self.capacity.num_blocks - 1} blocks of {block_size}); pass kv_budget_bytes or "
                      f"num_blocks to choose", file=sys.stderr)
        self.paged_kv = PagedKVCache.allocate(config, self.capacity.num_blocks, block_size, dtype, device)
        self.pool = BlockPool(self.capacity.num_blocks, block_size, enable_prefix_caching)
        self.scheduler = Scheduler(SchedulerConfig(policy, max_num_seqs, max_num_batched_tokens, max_model_len,
                                                   admission_batch), self.pool)
        self.scheduler.kv.window = config.sliding_window  # frees blocks that leave the window
        self.scheduler.proposer = make_proposer(speculative, max_model_len, draft_model, model, self.scheduler)
        on_gpu = device.type == "cuda"
        if cuda_graph and not on_gpu:
            raise ValueError("cuda_graph=True needs the model on a CUDA device; leave it None on a CPU")
        if fuse_projections if fuse_projections is not None else on_gpu:
            model.fuse_projections()  # inference only: one qkv and one gate_up matmul per layer
        face = model.setup_paged_caches(self.paged_kv, attention)  # the attention face, chosen once
        # Graphs replay the flash face's decode (the gather face needs host lengths per step).
        graphable = on_gpu and face.name == "flash"
        if cuda_graph and not graphable:
            model.remove_caches()
            raise ValueError(f"cuda_graph=True replays the flash-decode kernel, which needs a CUDA model in "
                             f"fp16/bf16 with head_dim 64 or 128 and attention auto or flash (got {dtype}, "
                             f"head_dim {config.head_dim}, the {face.name} face)")
        self.tune_s = 0.0
        if graphable:  # every attention autotune key this engine can meet, now rather than mid-serving
            t0 = time.perf_counter()
            face.tune(self.paged_kv, config.n_heads // config.n_kv_heads, max_num_seqs, max_num_batched_tokens,
                      max_model_len)
            self.tune_s = time.perf_counter() - t0
        graphs = None
        if cuda_graph if cuda_graph is not None else graphable:
            from scheduler.graphs import DecodeGraphs
            graphs = DecodeGraphs(model, self.paged_kv, max_model_len, max_num_seqs)
            # Every bucket now, as vLLM does at start-up: a lazy capture (with the decode kernel's
            # autotuning) lands in the middle of serving as a step of seconds.
            graphs.capture_all()
        mixed = None
        if graphs is not None and (mixed_cuda_graph if mixed_cuda_graph is not None else True):
            from scheduler.mixed_graphs import MixedGraphs
            mixed = MixedGraphs(model, face, self.paged_kv, max_num_seqs, max_num_batched_tokens, pool=graphs.pool)
            mixed.capture_all()  # every token bucket, with the decode buckets' memory pool
        elif mixed_cuda_graph:
            raise ValueError("mixed_cuda_graph=True needs the decode CUDA graphs (cuda_graph on a GPU model)")
        self.capture_s = (graphs.capture_s if graphs else 0.0) + (mixed.capture_s if mixed else 0.0)
        self.runner = ModelRunner(model, self.paged_kv, face, graphs, mixed)
        self._ids = itertools.count()
        self._live: dict[str, Request] = {}
        self._aborted_in_step: Optional[list[RequestOutput]] = None  # a list while step() runs

    # ------------------------------------------------------------------ requests
    def add_request(self, prompt: Union[str, Sequence[int]], params: Optional[SamplingParams] = None,
                    request_id: Optional[str] = None, on_token: Optional[Callable] = None) -> str:
        """Queue a request; raise (ValueError subclasses) for one that can never run."""
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        if on_token is not None and not callable(on_token):
            raise ValueError(f"on_token must be callable or None, got {type(on_token).__name__}")
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError("a text prompt needs a tokenizer; pass token ids or give LLM a tokenizer")
            prompt_ids = self.tokenizer.encode(prompt, bos=True)
        else:
            prompt_ids = _token_ids(prompt)
        vocab = self.model.config.vocab_size
        if not prompt_ids or min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt ids must be a non-empty list in [0, {vocab}), got {prompt_ids[:8]}")
        cfg = self.scheduler.config
        total = len(prompt_ids) + params.max_tokens
        if len(prompt_ids) >= cfg.max_model_len or total > cfg.max_model_len:
            raise ContextLengthError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) = "
                                     f"{total} exceeds the context of {cfg.max_model_len} tokens")
        self.capacity.check_fits(max_tokens_held(total, self.scheduler.kv.window, cfg.max_num_batched_tokens,
                                                 self.capacity.block_size))
        if cfg.policy != "chunked" and total > cfg.max_num_batched_tokens:
            raise ValueError(f"policy {cfg.policy!r} runs a prompt in one step, but {total} tokens exceed "
                             f"max_num_batched_tokens={cfg.max_num_batched_tokens}; use policy='chunked'")
        eos = getattr(self.tokenizer, "eos_id", None)
        if eos is not None and not params.ignore_eos and eos not in params.stop_token_ids:
            params = dataclasses.replace(params, stop_token_ids=params.stop_token_ids + (eos,))
        request_id = str(next(self._ids)) if request_id is None else request_id
        if request_id in self._live:
            raise ValueError(f"request id {request_id!r} is already running")
        req = Request(request_id, prompt_ids, params, on_token=on_token)
        self._live[request_id] = req
        self.scheduler.add_request(req)
        return request_id

    def abort_request(self, request_id: str) -> Optional[RequestOutput]:
        """Cancel a request: its blocks return to the pool now. Returns its final output (None if
        unknown or already finished); called from an on_token callback, step() returns it too."""
        req = self.scheduler.abort_request(request_id)
        self._live.pop(request_id, None)
        if req is None:
            return None
        out = self._output(req)
        if self._aborted_in_step is not None:
            self._aborted_in_step.append(out)
        return out

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ------------------------------------------------------------------ the loop
    def step(self) -> list[RequestOutput]:
        """One iteration: schedule -> execute -> update. Returns the outputs that changed.

        Failures stay with their requests. A request whose generator, sampling, stop-string
        check or on_token callback raises finishes with finish_reason "error" and the message in
        RequestOutput.error; if the whole step's forward raises, each request of that step
        finishes so (the traceback is logged). Their blocks are freed and the engine goes on
        with the others. A request aborted from an on_token callback comes back here, finished.
        """
        with phase("schedule"):
            sched = self.scheduler.schedule()
        try:
            result = self.runner.execute(sched)
        except Exception as e:  # noqa: BLE001 - the step's requests fail, the engine serves the rest
            log.exception("LLMEngine: a step of %d requests raised; they finish with an error", len(sched.scheduled))
            why = f"the step's forward raised {type(e).__name__}: {e}"
            result = ModelRunnerOutput(errors={s.request_id: why for s in sched.scheduled})
        now = time.perf_counter()
        changed: dict[str, RequestOutput] = {}
        self._aborted_in_step = []
        try:
            for rid, why in result.errors.items():
                req = self.scheduler.fail_request(rid, why)
                if req is not None:
                    self._emit(req, changed)
            for req in self.scheduler.update_from_output(sched, result):
                try:
                    self._record_token(req, now)
                except Exception as e:  # noqa: BLE001 - e.g. a tokenizer that cannot decode a sampled id
                    self.scheduler.fail_request(req.request_id, f"its output stage raised {type(e).__name__}: {e}")
                self._emit(req, changed)
            changed.update((out.request_id, out) for out in self._aborted_in_step)
        finally:
            self._aborted_in_step = None
        return list(changed.values())

    def _record_token(self, req: Request, now: float) -> None:
        """Timings of the token just appended, then the stop strings."""
        if req.first_token_time is None:
            req.first_token_time = now
        else:
            req.token_latencies.append(now - req.token_times[-1])
        req.token_times.append(now)
        if not req.status.finished and req.params.stop and self._hit_stop_string(req):
            self.scheduler.finish_request(req, RequestStatus.FINISHED_STOPPED)

    def _emit(self, req: Request, changed: dict[str, RequestOutput]) -> None:
        """req's output into `changed` and to its on_token callback; a callback that raises
        finishes its request with an error (the others go on)."""
        out = self._output(req)
        if out.finished:
            self._live.pop(req.request_id, None)
        if req.on_token is not None:
            try:
                req.on_token(out)
            except Exception as e:  # noqa: BLE001 - the caller's callback; its request alone fails
                why = f"its on_token callback raised {type(e).__name__}: {e}"
                if self.scheduler.fail_request(req.request_id, why) is not None:
                    self._live.pop(req.request_id, None)
                    out = self._output(req)
        changed[req.request_id] = out

    def _hit_stop_string(self, req: Request) -> bool:
        if self.tokenizer is None:
            return False
        return stop_string_hit(self.tokenizer.decode, req.output_token_ids, req.params.stop)

    def _text(self, ids: list[int], stop: Sequence[str]) -> Optional[str]:
        if self.tokenizer is None:
            return None
        text = self.tokenizer.decode(ids)
        cuts = [text.find(s) for s in stop if s in text]
        return text[:min(cuts)] if cuts else text

    def _output(self, req: Request) -> RequestOutput:
        ids, lat, stop = req.token_ids, req.token_latencies, req.params.stop
        start, end = req.num_prompt_tokens, len(ids)  # this step's snapshot of two append-only lists
        return RequestOutput(
            req.request_id, req.prompt_token_ids, (), req.status.finished,
            req.status.value if req.status.finished else None,
            None if req.first_token_time is None else req.first_token_time - req.arrival_time,
            num_preemptions=req.num_preemptions, num_prefix_hit_tokens=req.num_prefix_hit_tokens, error=req.error,
            text_fn=lambda: self._text(ids[start:end], stop), _ids_view=(ids, start, end),
            _lat_view=(lat, 0, len(lat)),
            logprobs=None if req.params.logprobs is None else list(req.logprobs))

    # ------------------------------------------------------------------ the KV, as a benchmark reads it
    def blocks_in_use(self) -> int:
        """KV blocks held by requests now (usable blocks not in the free queue)."""
        return self.pool.num_usable_blocks - self.pool.num_free_blocks

    def kv_usage(self) -> tuple[int, int]:
        """(blocks in use, slots of those blocks holding a computed token's K/V).

        Each running request holds num_computed_tokens entries in its table's blocks; a block
        shared by several requests (a prefix hit) is counted once, at its fullest. O(requests)
        when no block is shared (called after every step of a replay), O(blocks) otherwise.
        """
        bs, used = self.pool.block_size, self.blocks_in_use()
        held = [(req.num_computed_tokens, self.scheduler.kv.tables.get(req.request_id))
                for req in self.scheduler.running]
        held = [(n, table.block_ids) for n, table in held if table is not None]
        if sum(len(blocks) for _, blocks in held) == used:
            return used, sum(min(n, len(blocks) * bs) for n, blocks in held)
        fill: dict[int, int] = {}
        for n, blocks in held:
            for i, bid in enumerate(blocks):
                fill[bid] = max(fill.get(bid, 0), min(bs, max(0, n - i * bs)))
        return used, sum(fill.values())

    def close(self) -> None:
        """Free the paged KV: the runner drops the model's views of it, then the cache tensors go."""
        self.runner.close()
        self.paged_kv.k.clear()
        self.paged_kv.v.clear()


class LLM:
    """vLLM-style front door: LLM(model_or_path, ...).generate(prompts, sampling_params)."""

    def __init__(self, model_or_path, tokenizer=None, *, device=None, dtype=None, tensor_parallel_size: int = 1,
                 **engine_kwargs):
        self.tp = None  # tensor_parallel_size > 1: N spawned ranks, each an engine (scheduler/tp_llm.py)
        if tensor_parallel_size != 1:
            from scheduler.tp_llm import TPEngines

            self.tp = TPEngines(model_or_path, tensor_parallel_size, device=device, dtype=dtype,
                                tokenizer=tokenizer, **engine_kwargs)
            self.engine = None
            return
        if isinstance(model_or_path, (str, os.PathLike)):
            from model.tokenizer import has_tokenizer, load_tokenizer
            from model.weights import load_model

            path = os.fspath(model_or_path)
            model = load_model(path, device=device or "cpu", dtype=dtype)
            if getattr(model, "quantization", None) is not None:  # on CUDA: the low-bit kernels (CPU: unchanged)
                from quant.fast_linear import auto_fast
                auto_fast(model)
            if tokenizer is None and has_tokenizer(path):
                tokenizer = load_tokenizer(path)
        else:
            model = model_or_path
            if device is not None or dtype is not None:
                model = model.to(device=device, dtype=dtype)
        self.engine = LLMEngine(model, tokenizer, **engine_kwargs)

    def generate(self, prompts, sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 on_token: Optional[Callable] = None) -> list[RequestOutput]:
        """Run every prompt (text, or a list of ids; or one of either) to completion; outputs in input order."""
        if self.tp is not None:
            return self.tp.generate(prompts, sampling_params, on_token)
        if not isinstance(prompts, (str, list, tuple)):
            raise ValueError(f"prompts must be text, a list of token ids, or a list of either; got "
                             f"{type(prompts).__name__}")
        if isinstance(prompts, str) or (prompts and not isinstance(prompts[0], (str, list, tuple, torch.Tensor))):
            prompts = [prompts]  # one prompt (its ids are checked by add_request)
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if not isinstance(sampling_params, (list, tuple)):
            raise ValueError(f"sampling_params must be a SamplingParams or a list of them, got "
                             f"{type(sampling_params).__name__}")
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling_params)} sampling params")
        # Validate every request before queueing any, so a bad one leaves nothing behind.
        ids = []
        try:
            for prompt, params in zip(prompts, sampling_params):
                ids.append(self.engine.add_request(prompt, params, on_token=on_token))
        except Exception:
            for rid in ids:
                self.engine.abort_request(rid)
            raise
        final: dict[str, RequestOutput] = {}
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[rid] for rid in ids]


    def close(self) -> None:
        """Free the KV cache (tensor parallel: stop the ranks)."""
        if self.tp is not None:
            self.tp.close()
        else:
            self.engine.close()


def _token_ids(prompt) -> list[int]:
    """A prompt of token ids as a list of ints; floats, bools and strings are refused, not truncated."""
    try:
        ids = list(prompt)
        if any(isinstance(t, bool) for t in ids):
            raise TypeError("a bool")
        return [operator.index(t) for t in ids]
    except TypeError as e:
        raise ValueError(f"a prompt must be text or a list of int token ids, got {str(prompt)[:80]} ({e})") from None
