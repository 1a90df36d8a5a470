"""A small-message all-reduce over peer-to-peer buffers (CUDA IPC), for decode-sized tensors.

    ar = PeerAllReduce(group, max_bytes=1 << 20, device=torch.device("cuda", rank))
    out = ar.one_shot(x)     # every rank reads every peer's copy of x and sums them
    out = ar.two_shot(x)     # reduce-scatter by chunks, then all-gather (less traffic per rank)

The math: out = sum over ranks r = 0..n-1 of x_r, added in rank order (so every rank gets the
same bits); NCCL's all_reduce(SUM) is the reference it is checked against (bench.allreduce).

The buffers are torch symmetric memory (torch.distributed._symmetric_memory): each rank
allocates one, `rendezvous` maps every peer's into this process over CUDA IPC, and
`get_buffer(r, ...)` is a tensor view of rank r's, read by ordinary kernels over NVLink.
No multicast object is made: NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1 and
NVSHMEM_DISABLE_NVLS=1 are set before the allocation, and nothing here calls multimem ops.

One-shot, per call: copy x into this rank's buffer, a device barrier (signal pads; the
kernel waits for every peer's signal), one sum over the n peer views, and an end barrier
(no rank overwrites its buffer while a peer still reads it): 4 launches, all graph-capturable.
With alternate=True two buffers alternate between calls and the end barrier goes: the next
call's start barrier proves every peer finished reading the previous call's buffer. That is
only sound while consecutive calls really alternate, e.g. a captured graph holding an even
number of calls replayed back to back (a graph of one call replays the same buffer each time).
Two-shot: copy in, barrier, each rank sums its 1/n chunk from every peer and writes it back
into its own buffer, barrier, then gathers the n reduced chunks from the peers (n x less
read traffic per rank than one-shot: the better choice as messages grow), end barrier.
"""

from __future__ import annotations

import os
from typing import Callable

import torch

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def available() -> bool:
    """True when torch has symmetric memory and a GPU (the only place this runs)."""
    try:
        import torch.distributed._symmetric_memory  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def buffer_bytes(max_bytes: int) -> int:
    """Bytes of one buffer half for messages up to max_bytes (16-byte aligned)."""
    return -(-max_bytes // 16) * 16


class PeerAllReduce:
    """Sum-all-reduce of tensors up to max_bytes over this group's peer buffers (see module docstring)."""

    def __init__(self, group, max_bytes: int, device: torch.device, alternate: bool = False, handle=None,
                 rank: int = 0, world: int = 1):
        """handle (tests only): anything with get_buffer(rank, sizes, dtype, offset) and barrier(channel)
        over buffers of 2 * buffer_bytes(max_bytes), standing in for the symmetric memory; rank, world go
        with it. Without it the buffers are allocated and exchanged over `group` (None: the world)."""
        self.alternate = alternate
        self.max_bytes = max_bytes
        self.half = buffer_bytes(max_bytes)  # one allocation, two 16-byte aligned halves (alternate calls)
        self.calls = 0  # calls made (alternate: its parity picks the half; a captured graph bakes it in)
        if handle is not None:
            self.handle, self.rank, self.world = handle, rank, world
            return
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        for k, v in NO_MULTICAST.items():
            os.environ.setdefault(k, v)
        self.group = group or dist.group.WORLD
        self.rank, self.world = dist.get_rank(self.group), dist.get_world_size(self.group)
        self.buf = symm_mem.empty(2 * self.half, dtype=torch.uint8, device=device)
        if hasattr(symm_mem, "enable_symm_mem_for_group"):  # needed by older torch, deprecated later
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                symm_mem.enable_symm_mem_for_group(self.group.group_name)
        self.handle = symm_mem.rendezvous(self.buf, self.group.group_name)

    def _views(self, x: torch.Tensor, which: int) -> list[torch.Tensor]:
        """Each rank's buffer half `which` as a flat tensor of x's dtype and size."""
        n = x.numel()
        if n * x.element_size() > self.max_bytes:
            raise ValueError(f"{n * x.element_size()} bytes exceed this PeerAllReduce's max_bytes={self.max_bytes}")
        offset = which * self.half // x.element_size()
        return [self.handle.get_buffer(r, (n,), x.dtype, offset) for r in range(self.world)]

    def one_shot(self, x: torch.Tensor) -> torch.Tensor:
        """sum_r x_r in a new tensor shaped like x."""
        which = self._next()
        peers = self._views(x, which)
        peers[self.rank].copy_(x.reshape(-1))
        self.handle.barrier(channel=which)
        out = peers[0].clone() if self.world == 1 else peers[0] + peers[1]
        for r in range(2, self.world):
            out += peers[r]
        self._end(which)
        return out.view_as(x)

    def _next(self) -> int:
        """The buffer half of this call (always 0 unless alternate)."""
        which = self.calls % 2 if self.alternate else 0
        self.calls += 1
        return which

    def _end(self, which: int) -> None:
        """The end barrier: every peer has read this call's buffers (skipped when calls alternate)."""
        if not self.alternate:
            self.handle.barrier(channel=4 + which)

    def two_shot(self, x: torch.Tensor) -> torch.Tensor:
        """sum_r x_r in a new tensor shaped like x; x.numel() must split into world equal chunks."""
        n = x.numel()
        if n % self.world:
            raise ValueError(f"two_shot needs numel ({n}) divisible by the world size ({self.world})")
        which = self._next()
        peers = self._views(x, which)
        c = n // self.world
        mine = slice(self.rank * c, (self.rank + 1) * c)
        peers[self.rank].copy_(x.reshape(-1))
        self.handle.barrier(channel=which)
        part = peers[0][mine] + peers[1][mine] if self.world > 1 else peers[0][mine].clone()
        for r in range(2, self.world):
            part += peers[r][mine]
        peers[self.rank][mine].copy_(part)
        self.handle.barrier(channel=2 + which)  # every chunk is reduced before anyone gathers
        out = torch.cat([peers[r][r * c:(r + 1) * c] for r in range(self.world)])
        self._end(which)
        return out.view_as(x)


def small_message_all_reduce(ar: PeerAllReduce, group=None) -> Callable[[torch.Tensor], torch.Tensor]:
    """reduce(x): ar.one_shot for x up to ar.max_bytes, torch.distributed.all_reduce (in place) above."""
    import torch.distributed as dist

    def reduce(x: torch.Tensor) -> torch.Tensor:
        if x.numel() * x.element_size() <= ar.max_bytes:
            return ar.one_shot(x)
        dist.all_reduce(x, group=group)
        return x

    return reduce
