"""The engine on N tensor-parallel ranks: what `LLM(path, tensor_parallel_size=N)` runs.

The calling process holds no model. It spawns N ranks (model.parallel.Ranks); each loads its
slices (model.load(..., tp=ctx): safetensors get_slice, model/tp.py) and builds an ordinary
LLMEngine over them. Each generate call is sent to every rank; every rank schedules the same
requests the same way (the scheduler works from counters only, and the logits every rank
samples from are the same all-gathered tensor), with the global RNG reseeded identically for
unseeded sampling. Rank 0 returns the outputs; the others return their token ids, which must
equal rank 0's, else RankError says the ranks diverged.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import torch

from model.parallel import DEFAULT_TIMEOUT_S, RankError, Ranks

SAMPLING_SEED = 0  # the global RNG of every rank before each generate (unseeded requests sample alike)


def _engine_rank(ctx, source: Any, device: Optional[str], dtype, engine_kwargs: dict) -> None:
    """One rank: load its slices, build an LLM, answer generate calls until the parent sends None."""
    import model
    from model.loader import checkpoint_dir
    from scheduler.engine import LLM

    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
    net = model.load(source, dtype=dtype, device=ctx.device, tp=ctx)
    tokenizer = None
    path = checkpoint_dir(source)
    if path is not None:
        from model.tokenizer import has_tokenizer, load_tokenizer

        tokenizer = load_tokenizer(path) if has_tokenizer(path) else None
    # Piecewise mixed-step graphs are not yet checked with the ranks' all-reduces inside them.
    llm = LLM(net, tokenizer, **{"mixed_cuda_graph": False, **engine_kwargs})
    ctx.send("ready")
    try:
        while True:
            call = ctx.recv()
            if call is None:
                return
            prompts, params = call
            torch.manual_seed(SAMPLING_SEED)
            outs = llm.generate(prompts, params)
            if ctx.rank == 0:
                sent = []
                for out in outs:  # text now: its decoder closure does not cross processes
                    text = out.text
                    out = out.replace(text_fn=None)
                    out.__dict__["text"] = text
                    sent.append(out)
                ctx.send(sent)
            else:
                ctx.send([o.token_ids for o in outs])
    finally:
        llm.engine.close()


class TPEngines:
    """N ranks each running an LLMEngine over its slices of one model; generate returns rank 0's outputs."""

    def __init__(self, source, world: int, *, device=None, dtype=None, timeout_s: float = DEFAULT_TIMEOUT_S,
                 **engine_kwargs):
        if engine_kwargs.get("tokenizer") is not None:
            raise ValueError("tensor_parallel_size > 1 loads the tokenizer from the checkpoint; pass none")
        engine_kwargs.pop("tokenizer", None)
        if not isinstance(source, (str, os.PathLike)):
            raise ValueError("tensor_parallel_size > 1 needs a checkpoint path or model name (each rank loads "
                             f"its own slices), not a built {type(source).__name__}")
        from model.tp import check_tp_source

        check_tp_source(source, world)  # one clear error here for a bad path or tp, before any rank starts
        self.world = world
        self.ranks = Ranks(_engine_rank, world, args=(os.fspath(source), device, dtype, engine_kwargs),
                           device=None if device is None else str(device), timeout_s=timeout_s)
        self.ranks.receive()  # every rank loaded and built its engine

    def generate(self, prompts, sampling_params=None, on_token=None) -> list:
        """LLM.generate on every rank; rank 0's outputs (the others must agree token for token)."""
        if on_token is not None:
            raise ValueError("on_token is not supported with tensor_parallel_size > 1")
        self.ranks.send((prompts, sampling_params))
        got = self.ranks.receive()
        ids = [o.token_ids for o in got[0]]
        for rank in range(1, self.world):
            if got[rank] != ids:
                raise RankError(f"tensor-parallel ranks diverged: rank {rank}'s tokens differ from rank 0's")
        return got[0]

    def close(self) -> None:
        """Stop the ranks (their engines free their KV first)."""
        if self.ranks is None:
            return
        try:
            self.ranks.send(None)
            self.ranks.result()
        finally:
            self.ranks.stop()
            self.ranks = None
