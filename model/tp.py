"""Megatron-style tensor parallelism: one rank's slice of a Llama and the layers that talk.

    plan = TPPlan(config, rank, world, group)      # ConfigError when tp does not divide the sizes
    model = plan.build()                             # this rank's Transformer on the meta device
    model = shard_model(full_model, plan)            # from an in-memory model (random weights, tests)
    model = model.weights.load_model(path, tp=plan)  # from safetensors, reading only this rank's slices

What each rank holds (h = n_heads, g = n_kv_heads, I = intermediate_size, V = vocab_size, r = rank):
- q_proj rows of query heads [r*h/tp, (r+1)*h/tp): column parallel, no communication;
- k_proj/v_proj rows of its KV heads: g/tp heads when tp divides g, else (tp a multiple of g)
  the one KV head r // (tp/g) that its query heads read, replicated on tp/g ranks;
- o_proj columns of its query heads: row parallel, partial sums all-reduced (RowParallelLinear);
- gate_proj/up_proj rows [r*I/tp, (r+1)*I/tp); down_proj those columns, all-reduced;
- embed_tokens rows [r*V/tp, (r+1)*V/tp) (VocabParallelEmbedding: ids outside give zeros, one
  all-reduce sums the ranks' rows); lm_head the same rows (VocabParallelHead: one all-gather of
  the logits per forward, so every rank samples from the same full logits);
- the norms whole.
The rank's model is a plain Transformer built from local_config (heads and intermediate per rank,
vocab whole: the logits it returns are the full vocabulary's), with o_proj, down_proj, the
embedding and lm_head swapped for the parallel modules below. The caches, fused projections
(fuse_projections concatenates this rank's q, k, v rows), CUDA graphs (NCCL collectives are
captured inside) and the engine work unchanged on it. Two all-reduces per layer plus the
embedding's one and the logits' all-gather are the whole communication.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from model.config import ConfigError, ModelConfig
from model.llama import Transformer


TP_ARCHITECTURES = ("llama", "mistral")  # the layouts whose every weight this module knows how to split


def check_tp(config: ModelConfig, world: int) -> None:
    """Raise ConfigError naming the sizes when `world` ranks cannot split this model."""
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise ConfigError(f"tensor-parallel size must be an integer >= 1, got {world!r}")
    arch = getattr(config, "arch", "llama")
    if world > 1 and arch not in TP_ARCHITECTURES:
        raise ConfigError(f"tensor parallelism splits {', '.join(TP_ARCHITECTURES)} models; this one is {arch} "
                          "(biases, parallel blocks and experts are not split yet): run it with tp=1")
    bad = [f"{name} ({size})" for name, size in (("n_heads", config.n_heads), ("intermediate_size",
                                                 config.intermediate_size), ("vocab_size", config.vocab_size))
           if size % world]
    g = config.n_kv_heads
    if g % world and world % g:
        bad.append(f"n_kv_heads ({g}; tp must divide it or be a multiple of it)")
    if bad:
        raise ConfigError(f"tensor-parallel size {world} does not divide {', '.join(bad)}; choose a tp that "
                          f"divides n_heads={config.n_heads}, n_kv_heads={g} (or a multiple of it), "
                          f"intermediate_size={config.intermediate_size} and vocab_size={config.vocab_size}")


def check_tp_source(source, world: int) -> None:
    """check_tp for what model.load(source) would build (checkpoint config or random-weights config),
    before any rank starts: ConfigError / CheckpointError with one line."""
    from model.loader import checkpoint_dir, random_config

    path = checkpoint_dir(source)
    check_tp(ModelConfig.from_hf_config(path) if path is not None else random_config(source), world)


@dataclasses.dataclass(frozen=True)
class TPPlan:
    """Which slice of every tensor rank `rank` of `world` holds, and the group it talks over."""

    config: ModelConfig  # the whole model's
    rank: int
    world: int
    group: Optional[object] = None  # a torch.distributed ProcessGroup; None = the default group

    def __post_init__(self):
        check_tp(self.config, self.world)
        if not 0 <= self.rank < self.world:
            raise ConfigError(f"rank {self.rank} is outside tensor-parallel size {self.world}")

    @property
    def heads(self) -> int:
        """Query heads per rank."""
        return self.config.n_heads // self.world

    @property
    def kv_heads(self) -> int:
        """KV heads this rank holds (1 when they are replicated)."""
        return max(1, self.config.n_kv_heads // self.world)

    @property
    def kv_start(self) -> int:
        """Index of this rank's first KV head in the whole model."""
        g = self.config.n_kv_heads
        return self.rank * self.kv_heads if g >= self.world else self.rank // (self.world // g)

    def local_config(self) -> ModelConfig:
        """The config a rank's Transformer is built from: heads and intermediate per rank, vocab whole."""
        c = self.config
        return c.replace(n_heads=self.heads, n_kv_heads=self.kv_heads, head_dim=c.head_dim,
                         intermediate_size=c.intermediate_size // self.world)

    def index(self, name: str) -> Optional[tuple]:
        """The slice of the whole tensor `name` (HF key) this rank holds; None for the whole tensor."""
        c, r, hd = self.config, self.rank, self.config.head_dim
        leaf = name.rsplit(".", 2)[-2]  # q_proj, o_proj, embed_tokens, lm_head, ...
        q, inter, vocab = self.heads * hd, c.intermediate_size // self.world, c.vocab_size // self.world
        rows = {"q_proj": (r * q, q), "k_proj": (self.kv_start * hd, self.kv_heads * hd),
                "v_proj": (self.kv_start * hd, self.kv_heads * hd), "gate_proj": (r * inter, inter),
                "up_proj": (r * inter, inter), "embed_tokens": (r * vocab, vocab), "lm_head": (r * vocab, vocab)}
        cols = {"o_proj": (r * q, q), "down_proj": (r * inter, inter)}
        if leaf in rows:
            start, n = rows[leaf]
            return (slice(start, start + n),)
        if leaf in cols:
            start, n = cols[leaf]
            return (slice(None), slice(start, start + n))
        return None

    def build(self) -> Transformer:
        """This rank's Transformer with the parallel modules in place (call under torch.device("meta"))."""
        model = Transformer(self.local_config())
        vocab = self.config.vocab_size // self.world
        for layer in model.model.layers:
            layer.self_attn.o_proj = RowParallelLinear.like(layer.self_attn.o_proj, self.group)
            layer.mlp.down_proj = RowParallelLinear.like(layer.mlp.down_proj, self.group)
        dim = self.config.dim
        model.model.embed_tokens = VocabParallelEmbedding(vocab, dim, self.rank * vocab, self.group)
        model.lm_head = VocabParallelHead(dim, vocab, self.world, self.group)
        model.tie_weights()
        model.tp = self  # who holds what (benches and the engine read it; the forward does not)
        return model


# torch 2.13 renames all_gather_into_tensor (same signature); the GPU machine's torch 2.11 has the old name.
_ALL_GATHER = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def all_reduce_(x: torch.Tensor, group=None) -> torch.Tensor:
    """Sum x over the group's ranks, in place; returns x."""
    dist.all_reduce(x, group=group)
    return x


def set_all_reduce(model: nn.Module, reduce: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> int:
    """Make every all-reduce of a rank's model call reduce(x) -> summed tensor (None: NCCL/gloo's,
    in place). E.g. kernels.custom_allreduce for decode-sized messages. Returns how many modules."""
    n = 0
    for m in model.modules():
        if isinstance(m, (RowParallelLinear, VocabParallelEmbedding)):
            m.reduce = reduce if reduce is not None else partial(all_reduce_, group=m.group)
            n += 1
    return n


class RowParallelLinear(nn.Linear):
    """y = all_reduce(x_local @ W_local^T): each rank holds in_features / tp input columns of W."""

    def __init__(self, in_features: int, out_features: int, group=None, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.group = group
        self.reduce = partial(all_reduce_, group=group)  # set_all_reduce swaps it

    @classmethod
    def like(cls, linear: nn.Linear, group) -> "RowParallelLinear":
        """A bias-free RowParallelLinear of linear's (local) shape on its device."""
        return cls(linear.in_features, linear.out_features, group, device=linear.weight.device,
                   dtype=linear.weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_features / tp) -> (..., out_features), summed over ranks."""
        return self.reduce(F.linear(x, self.weight))


class VocabParallelEmbedding(nn.Module):
    """Rows [start, start + num_embeddings) of the table; ids outside them give zero rows, and one
    all-reduce sums the ranks' rows (exactly one rank contributes each row, so the sum is exact)."""

    def __init__(self, num_embeddings: int, dim: int, start: int, group=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, dim))
        self.start, self.group = start, group
        self.reduce = partial(all_reduce_, group=group)  # set_all_reduce swaps it

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (...) long -> (..., dim)."""
        local = ids - self.start
        outside = (local < 0) | (local >= self.weight.shape[0])
        x = F.embedding(local.masked_fill(outside, 0), self.weight)
        x = x.masked_fill(outside.unsqueeze(-1), 0)
        return self.reduce(x)


class VocabParallelHead(nn.Module):
    """Logits of this rank's vocab rows, all-gathered once into the full (..., vocab) on every rank."""

    def __init__(self, dim: int, num_local: int, world: int, group=None):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_local, dim))
        self.world, self.group = world, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., dim) -> (..., vocab) with vocab = world * num_local, rank-major."""
        local = F.linear(x, self.weight)  # (..., V/tp)
        lead, n = local.shape[:-1], local.shape[-1]
        flat = local.reshape(-1, n)  # (M, V/tp)
        out = flat.new_empty(self.world * flat.shape[0], n)  # concatenated by rank (gloo knows no stack form)
        _ALL_GATHER(out, flat.contiguous(), group=self.group)
        # (tp, M, V/tp) -> (M, tp, V/tp) -> (..., V)
        return out.view(self.world, -1, n).transpose(0, 1).reshape(*lead, self.world * n)


def shard_model(full: Transformer, plan: TPPlan) -> Transformer:
    """This rank's model holding plan's slices of an in-memory model's weights (random weights, tests).

    The fused or quantized forms are not sharded: shard the plain model, then fuse.
    """
    if full.config != plan.config:
        raise ConfigError("shard_model: the model's config is not the plan's")
    weight = full.model.embed_tokens.weight
    with torch.device("meta"):
        model = plan.build()
    state = {}
    for name, t in full.state_dict().items():
        idx = plan.index(name)
        state[name] = (t if idx is None else t[idx]).detach().clone()
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    return model.to(device=weight.device).eval()
