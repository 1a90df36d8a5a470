"""kernels/custom_allreduce.py's index arithmetic on the CPU: ranks as threads over shared CPU buffers,
a threading.Barrier for the device barrier. The GPU check (symmetric memory, NCCL as reference) is
parity/test_tp_gpu.py; this one runs the same one_shot / two_shot code in CI."""

import threading

import pytest
import torch

from kernels.custom_allreduce import PeerAllReduce, buffer_bytes

MAX_BYTES = 4096


class FakeHandle:
    """get_buffer / barrier of torch's _SymmetricMemory over CPU tensors shared by the thread-ranks."""

    def __init__(self, bufs, barrier):
        self.bufs, self.sync = bufs, barrier

    def get_buffer(self, rank, sizes, dtype, storage_offset=0):
        n = 1
        for s in sizes:
            n *= s
        return self.bufs[rank].view(dtype)[storage_offset:storage_offset + n].view(sizes)

    def barrier(self, channel=0):
        self.sync.wait(timeout=10)


def run_ranks_as_threads(world, kind, numel, calls, alternate=False, fault=None):
    bufs = [torch.full((2 * buffer_bytes(MAX_BYTES),), 255, dtype=torch.uint8) for _ in range(world)]
    barrier = threading.Barrier(world)
    inputs = [[torch.randint(-8, 9, (numel,), generator=torch.Generator().manual_seed(100 * c + r)).float()
               for r in range(world)] for c in range(calls)]
    outs = [[None] * calls for _ in range(world)]

    def rank(r):
        ar = PeerAllReduce(None, MAX_BYTES, torch.device("cpu"), alternate, FakeHandle(bufs, barrier), r, world)
        if fault:
            fault(ar)
        for c in range(calls):
            outs[r][c] = getattr(ar, kind)(inputs[c][r])

    threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    want = [sum(inputs[c]) for c in range(calls)]
    return outs, want


@pytest.mark.parametrize("kind", ["one_shot", "two_shot"])
@pytest.mark.parametrize("world,alternate", [(2, False), (4, False), (2, True)])
def test_sum_over_ranks(kind, world, alternate):
    outs, want = run_ranks_as_threads(world, kind, numel=256, calls=3, alternate=alternate)
    for r in range(world):
        for c in range(3):
            assert torch.equal(outs[r][c], want[c]), f"rank {r} call {c}"


def test_a_rank_reading_only_itself_is_caught():
    """The planted fault: every peer view is this rank's own buffer (a wrong get_buffer rank)."""
    def own_only(ar):
        real = ar.handle.get_buffer
        ar.handle = FakeHandle(ar.handle.bufs, ar.handle.sync)
        ar.handle.get_buffer = lambda r, *a: real(ar.rank, *a)

    outs, want = run_ranks_as_threads(2, "one_shot", numel=256, calls=1, fault=own_only)
    assert not torch.equal(outs[0][0], want[0])


def test_too_large_a_message_is_refused():
    ar = PeerAllReduce(None, MAX_BYTES, torch.device("cpu"), handle=FakeHandle([], None), rank=0, world=1)
    with pytest.raises(ValueError, match="max_bytes=4096"):
        ar.one_shot(torch.zeros(MAX_BYTES))  # fp32: 4x too many bytes
