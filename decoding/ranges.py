"""Named ranges around the phases of a step, for profilers: NVTX (Nsight Systems) and torch.profiler.

    with phase("forward"):
        logits = model(...)

Each range is an NVTX range in the "lab" domain (the nvtx package; torch.cuda.nvtx where the
package is missing and CUDA is present) and a torch.profiler record_function "lab::<name>", so
`nsys profile` and the benches' --profile traces show schedule / prepare / forward / sample of
every engine step. With no profiler attached a range costs a few microseconds of host time
(against milliseconds per step). Like cuda_graph.py it imports nothing of ours.
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


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """An NVTX range and a torch.profiler range named `name` around the body."""
    with torch.profiler.record_function(f"lab::{name}"):
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
