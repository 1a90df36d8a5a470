"""PagedKVCache: per-layer K/V blocks (num_blocks, block_size, n_kv_heads, head_dim).

Sizing (`kv_capacity`) turns a memory budget into blocks; the block ids themselves are
handed out by `cache.block_pool.BlockPool`. The model reads and writes the tensors
through a `PagedLayerCache` per layer, addressed by the `PagedAttentionMetadata` of the
current batch (built by `build_metadata`, bound once per step by the model runner).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from cache.block_pool import NULL_BLOCK_ID
from cache.kv_manager import slot_mapping


class KVCapacityError(ValueError):
    """The KV budget cannot hold what was asked (too small a budget, or a request that never fits)."""


@dataclass(frozen=True)
class KVCapacity:
    """How many blocks/tokens a budget buys. Block 0 (the null block) is counted in
    num_blocks but not in num_tokens: it never holds a request's tokens."""

    num_blocks: int
    block_size: int
    bytes_per_block: int  # K and V, all layers

    @property
    def num_tokens(self) -> int:
        return (self.num_blocks - 1) * self.block_size

    def check_fits(self, num_tokens: int) -> None:
        """Raise KVCapacityError when a request of num_tokens (prompt + max new) can never fit."""
        if num_tokens > self.num_tokens:
            raise KVCapacityError(
                f"a request of {num_tokens} tokens (prompt + max_tokens) can never fit the KV cache of "
                f"{self.num_tokens} tokens ({self.num_blocks - 1} blocks x {self.block_size}); raise the KV "
                f"budget or shorten the request")


class KVDtypeError(ValueError):
    """A KV cache dtype that cannot hold keys and values (not floating point)."""


def check_kv_dtype(dtype) -> None:
    """Raise KVDtypeError unless dtype is a floating torch.dtype (int8/bool K/V would decode garbage)."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise KVDtypeError(f"kv_dtype must be a floating torch.dtype (float16, bfloat16, float32), got {dtype}")


def bytes_per_token(config, dtype: torch.dtype) -> int:
    """K and V of one token over all layers: 2 * n_layers * n_kv_heads * head_dim * itemsize.
    Raises KVDtypeError for a non-floating dtype."""
    check_kv_dtype(dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.n_layers * config.n_kv_heads * config.head_dim * itemsize


def kv_capacity(config, dtype: torch.dtype, budget_bytes: int, block_size: int = 16) -> KVCapacity:
    """Blocks of block_size tokens that fit budget_bytes for a model `config` (ModelConfig-like:
    n_layers, n_kv_heads, head_dim). Raises KVCapacityError if not even 2 blocks fit."""
    per_block = bytes_per_token(config, dtype) * block_size
    num_blocks = int(budget_bytes) // per_block
    if num_blocks < 2:
        raise KVCapacityError(f"a KV budget of {int(budget_bytes)} bytes holds {num_blocks} blocks of "
                              f"{per_block} bytes; at least 2 are needed (block 0 is the null block)")
    return KVCapacity(num_blocks, block_size, per_block)


def resolve_budget(device: torch.device, budget_bytes: Optional[int] = None,
                   gpu_memory_fraction: Optional[float] = None) -> int:
    """The KV budget in bytes: explicit bytes, else a fraction of free GPU memory (CUDA only)."""
    if budget_bytes is not None:
        return int(budget_bytes)
    if gpu_memory_fraction is None:
        raise KVCapacityError("give a KV budget: budget_bytes, or gpu_memory_fraction on CUDA")
    if torch.device(device).type != "cuda":
        raise KVCapacityError(f"gpu_memory_fraction needs a CUDA device, got {device}; pass budget_bytes")
    if not 0.0 < gpu_memory_fraction <= 1.0:
        raise KVCapacityError(f"gpu_memory_fraction must be in (0, 1], got {gpu_memory_fraction}")
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free * gpu_memory_fraction)


@dataclass
class PagedAttentionMetadata:
    """Addressing for one forward over a flat batch of N new tokens from R requests.

    Requests are laid out one after the other; request r owns new tokens
    query_start_loc[r] : query_start_loc[r + 1]. Made by `build_metadata`, the one place.
    """

    positions: torch.Tensor  # (N,) long: each new token's position in its sequence
    slot_mapping: torch.Tensor  # (N,) long: flat cache slot (block * block_size + offset) to write
    block_tables: torch.Tensor  # (R, max_blocks) int32; padded with the null block 0
    seq_lens: torch.Tensor  # (R,) int32: tokens in the cache after this step's writes
    query_start_loc: list[int]  # R + 1 host ints, prefix sums of new tokens per request
    seq_lens_host: list[int]  # R host ints, = seq_lens
    decode_only: bool  # every request has exactly one new token
    # The attention face's plan of this step (model.paged_attention), made by the runner's plan
    # step before the forward and read by every layer; None when the face needs none.
    plan: Optional[object] = field(default=None, repr=False, compare=False)


def build_metadata(block_tables: Sequence[Sequence[int]], starts: Sequence[int], num_new: Sequence[int],
                   block_size: int, device=None, width: Optional[int] = None) -> PagedAttentionMetadata:
    """Metadata for requests r that hold starts[r] tokens and add num_new[r] at positions starts[r]..

    block_tables[r] must cover starts[r] + num_new[r] tokens; rows are padded with the null
    block to `width` blocks (default: the longest table). Slots come from `slot_mapping`.
    """
    positions, slots, qsl, seq_lens = [], [], [0], []
    for table, start, n in zip(block_tables, starts, num_new):
        end = start + n
        positions.extend(range(start, end))
        slots.extend(slot_mapping(table, start, end, block_size))
        qsl.append(qsl[-1] + n)
        seq_lens.append(end)
    width = max(len(t) for t in block_tables) if width is None else width
    padded = [list(t) + [NULL_BLOCK_ID] * (width - len(t)) for t in block_tables]
    tensor = functools.partial(torch.tensor, device=device)
    return PagedAttentionMetadata(
        positions=tensor(positions, dtype=torch.long), slot_mapping=tensor(slots, dtype=torch.long),
        block_tables=tensor(padded, dtype=torch.int32), seq_lens=tensor(seq_lens, dtype=torch.int32),
        query_start_loc=qsl, seq_lens_host=seq_lens, decode_only=all(n == 1 for n in num_new))


class PagedLayerCache(nn.Module):
    """One layer's view of the paged cache: its k/v tensors and the batch's metadata.
    A Module (with no parameters or buffers) only so it can sit where a StaticKVCache sat;
    the tensors belong to the PagedKVCache, so state_dict and .to() never see them."""

    def __init__(self, owner: "PagedKVCache", layer: int):
        super().__init__()
        self.owner, self.layer = owner, layer

    @property
    def k_cache(self) -> torch.Tensor:
        return self.owner.k[self.layer]

    @property
    def v_cache(self) -> torch.Tensor:
        return self.owner.v[self.layer]

    @property
    def meta(self) -> PagedAttentionMetadata:
        assert self.owner.meta is not None, "bind() the batch's PagedAttentionMetadata before the forward"
        return self.owner.meta


class PagedKVCache:
    """K/V storage for every layer: k[l], v[l] are (num_blocks, block_size, n_kv_heads, head_dim).

    Allocated only by `allocate` (the engine, after the model is built), never inside a
    model. Block 0 is the null block: its contents are never read as real tokens.
    """

    def __init__(self, k: list[torch.Tensor], v: list[torch.Tensor]):
        self.k, self.v = k, v
        self.num_blocks, self.block_size, self.n_kv_heads, self.head_dim = k[0].shape
        self.meta: Optional[PagedAttentionMetadata] = None

    @classmethod
    def allocate(cls, config, num_blocks: int, block_size: int, dtype: torch.dtype, device=None) -> "PagedKVCache":
        """Zeroed K/V blocks for every layer; KVDtypeError for a non-floating dtype."""
        check_kv_dtype(dtype)
        shape = (num_blocks, block_size, config.n_kv_heads, config.head_dim)
        k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(config.n_layers)]
        return cls(k, v)

    def layer_views(self) -> list[PagedLayerCache]:
        return [PagedLayerCache(self, i) for i in range(len(self.k))]

    def bind(self, meta: Optional[PagedAttentionMetadata]) -> None:
        """Set the addressing of the next forward (None after it)."""
        self.meta = meta

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: block dst gets src's K/V in every layer."""
        if not copies:
            return
        src = torch.tensor([s for s, _ in copies], device=self.k[0].device)
        dst = torch.tensor([d for _, d in copies], device=self.k[0].device)
        for k, v in zip(self.k, self.v):
            k[dst] = k[src]
            v[dst] = v[src]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)
