"""Process groups for tensor parallelism: start N ranks on one host, or join a torchrun launch.

    results = run_ranks(fn, world=2, args=(...,))   # fn(ctx, *args) in `world` spawned processes
    ctx = init_from_env()                            # inside a torchrun launch (RANK, WORLD_SIZE, ...)

Backend: NCCL when every rank gets its own GPU, gloo otherwise (CPU). The process group has a
timeout (`timeout_s`), so a rank whose peer died leaves its collective with an error instead
of waiting forever; run_ranks also watches its children and stops the others, naming the rank
that failed, when one exits. NVLink multicast stays off (NCCL_NVLS_ENABLE=0,
TORCH_SYMM_MEM_DISABLE_MULTICAST=1, NVSHMEM_DISABLE_NVLS=1, set before the group is made).

Multi-node (not testable here): every node runs the same binary under torchrun, e.g.
    torchrun --nnodes 2 --nproc_per_node 8 --node_rank $NODE --rdzv_backend c10d \\
        --rdzv_endpoint $HEAD:29500 -m model.generate --tp 16 --checkpoint /ckpt
and model.generate (or your script) calls init_from_env(), which reads torchrun's variables.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import pickle
import queue as queue_lib
import socket
import time
import traceback
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# Multicast (NVLS) is off everywhere: the lab's machines lend GPUs whose multicast objects
# outlive a crashed process. setdefault: a user who sets them keeps their values.
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
DEFAULT_TIMEOUT_S = 300.0  # a collective that waits longer than this on a dead peer raises


class RankError(RuntimeError):
    """A rank failed (raised, or exited); the message names it and what it said."""


@dataclasses.dataclass(frozen=True)
class RankContext:
    """What a rank knows about its launch: its rank, the world size and its device."""

    rank: int
    world: int
    device: torch.device
    backend: str
    _inbox: Any = dataclasses.field(default=None, repr=False)  # parent -> this rank (Ranks.send)
    _outbox: Any = dataclasses.field(default=None, repr=False)  # this rank -> parent (Ranks.receive)

    def recv(self) -> Any:
        """The next object the parent sent (Ranks.send); blocks."""
        return pickle.loads(self._inbox.get())

    def send(self, obj: Any) -> None:
        """Give the parent obj (Ranks.receive)."""
        self._outbox.put((self.rank, "msg", pickle.dumps(obj)))

    @property
    def is_driver(self) -> bool:
        """Rank 0 prints and returns outputs."""
        return self.rank == 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 free at the time of asking (the rendezvous of one launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pick_backend(world: int, device: Optional[str] = None) -> str:
    """nccl when `device` is cuda (or auto) and there are >= world GPUs; gloo otherwise."""
    if device not in (None, "auto") and not str(device).startswith("cuda"):
        return "gloo"
    if torch.cuda.is_available() and torch.cuda.device_count() >= world:
        return "nccl"
    if device is not None and str(device).startswith("cuda"):
        raise RankError(f"{world} tensor-parallel ranks need {world} GPUs; this host has "
                        f"{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    return "gloo"


def init(rank: int, world: int, backend: str, local_rank: Optional[int] = None,
         timeout_s: float = DEFAULT_TIMEOUT_S, init_method: Optional[str] = None) -> RankContext:
    """Join the default process group (env:// unless init_method) and bind this rank's device."""
    for k, v in NO_MULTICAST.items():
        os.environ.setdefault(k, v)
    local_rank = rank if local_rank is None else local_rank
    device = torch.device("cpu")
    kwargs = {}
    if backend == "nccl":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        kwargs["device_id"] = device  # binds the communicator now, not at the first collective
    dist.init_process_group(backend, init_method=init_method or "env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return RankContext(rank, world, device, backend)


def init_from_env(device: Optional[str] = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> RankContext:
    """Join the group a torchrun launch describes (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)."""
    try:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError) as e:
        raise RankError(f"not inside a torchrun launch (RANK/WORLD_SIZE: {e}); use run_ranks") from None
    local = int(os.environ.get("LOCAL_RANK", rank))
    nlocal = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return init(rank, world, pick_backend(nlocal, device), local, timeout_s)


def under_torchrun() -> bool:
    """True when this process is a rank of a torchrun launch."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "TORCHELASTIC_RUN_ID" in os.environ


def _entry(rank: int, fn: Callable, world: int, port: int, backend: str, timeout_s: float, args: tuple,
           inbox, outbox) -> None:
    """One spawned rank: join the group, run fn, send its result (or its traceback) to the parent."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    try:
        ctx = dataclasses.replace(init(rank, world, backend, rank, timeout_s), _inbox=inbox, _outbox=outbox)
        out = pickle.dumps(fn(ctx, *args))
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises RankError
        outbox.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"))
        outbox.close()
        outbox.join_thread()
        os._exit(1)  # no group teardown: destroying a communicator whose peer is gone can block
    if dist.is_initialized():
        dist.destroy_process_group()
    outbox.put((rank, "done", out))


class Ranks:
    """`world` spawned ranks running fn(ctx, *args), and the parent's two-way line to them.

    The parent `send`s one object to every rank (ctx.recv() there) and `receive`s one from each
    (ctx.send(obj) there); `result()` waits for fn's return values. Any wait watches the
    processes: when a rank raises or exits, the others are stopped and RankError names it.
    fn must be importable (a module-level function); what crosses is pickled between our own
    processes (plain bytes: a tensor sent as-is would travel by a shared-memory handle that
    dies with its sender).
    """

    def __init__(self, fn: Callable, world: int, args: Sequence[Any] = (), device: Optional[str] = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 0.2):
        if world < 1:
            raise RankError(f"world size must be >= 1, got {world}")
        backend = pick_backend(world, device)
        mpctx = mp.get_context("spawn")
        self.world, self.poll_s = world, poll_s
        self.outbox = mpctx.Queue()
        self.inboxes = [mpctx.Queue() for _ in range(world)]
        port = free_port()
        self.procs = [mpctx.Process(target=_entry, args=(r, fn, world, port, backend, timeout_s, tuple(args),
                                                         self.inboxes[r], self.outbox), daemon=True)
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def send(self, obj: Any) -> None:
        """Give every rank obj (its ctx.recv() returns it)."""
        data = pickle.dumps(obj)
        for q in self.inboxes:
            q.put(data)

    def receive(self) -> list[Any]:
        """One ctx.send() object from each rank, by rank."""
        return self._collect("msg")

    def result(self) -> list[Any]:
        """fn's return values by rank, once every rank has returned."""
        out = self._collect("done")
        for p in self.procs:
            p.join(timeout=30)
        return out

    def _collect(self, want: str) -> list[Any]:
        got: dict[int, Any] = {}
        grace = False  # a rank's last message may land just after we saw it exit: one more look first
        while len(got) < self.world:
            try:
                rank, kind, payload = self.outbox.get(timeout=1.0 if grace else self.poll_s)
            except queue_lib.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(self.procs) if p.exitcode is not None
                        and (p.exitcode != 0 or r not in got)]
                if dead and grace:
                    self._fail("; ".join(f"rank {r} of {self.world} exited with code {code}" for r, code in dead)
                               + " before it answered; the other ranks were stopped")
                grace = bool(dead)
                continue
            if kind == "error":  # name a rank that died first: the others' errors follow from it
                time.sleep(1.0)
                dead = [f"rank {r} of {self.world} exited with code {p.exitcode}" for r, p in enumerate(self.procs)
                        if r != rank and p.exitcode not in (None, 0, 1)]
                self._fail("; ".join(dead + [f"rank {rank} of {self.world} failed: {payload}"]))
            if kind != want:
                self._fail(f"rank {rank} sent {kind!r} while the parent waited for {want!r}")
            got[rank] = pickle.loads(payload)  # our own child's bytes, never a file
        return [got[r] for r in range(self.world)]

    def _fail(self, why: str):
        """Stop every rank, then raise RankError(why)."""
        self.stop()
        raise RankError(why)

    def stop(self) -> None:
        """Terminate the ranks still running."""
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()


def run_ranks(fn: Callable, world: int, args: Sequence[Any] = (), device: Optional[str] = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> list[Any]:
    """Run fn(ctx: RankContext, *args) in `world` spawned processes; return their results by rank.

    When a rank raises or exits, the others are stopped and RankError names the first failure.
    """
    ranks = Ranks(fn, world, args, device, timeout_s)
    try:
        return ranks.result()
    finally:
        ranks.stop()
