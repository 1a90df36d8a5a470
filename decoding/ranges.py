"""Named ranges around the phases of a step, for profilers: NVTX (Nsight Systems) and torch.profiler.

    with phase("forward"):
        logits = model(...)

Each range is an NVTX range in the "lab" domain (the nvtx package; torch.cuda.nvtx where the
package is missing and CUDA is present) and a torch.profiler record_function "lab::<name>", so
`nsys profile` and the benches' --profile traces show schedule / prepare / forward / sample of
every engine step. The torch.profiler range is opened only while a profiler records (it costs
~20 us on the dev CPU); the NVTX range ~10 us (against milliseconds per step). Like cuda_graph.py it imports nothing of ours.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

try:
    import nvtx as _nvtx
except ImportError:  # the GPU image may lack the package: torch's own binding, or nothing
    _nvtx = None

DOMAIN = "lab"


def _profiler_on() -> bool:
    """Whether a torch.profiler is recording (0.2 us to ask; a record_function costs ~20 us)."""
    return torch._C._autograd._profiler_enabled()


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """An NVTX range and, while a torch.profiler records, a torch.profiler range named `name`."""
    with torch.profiler.record_function(f"lab::{name}") if _profiler_on() else contextlib.nullcontext():
        if _nvtx is not None:
            with _nvtx.annotate(name, domain=DOMAIN):
                yield
        elif torch.cuda.is_available():
            torch.cuda.nvtx.range_push(name)
            try:
                yield
            finally:
                torch.cuda.nvtx.range_pop()
        else:
            yield
