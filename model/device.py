"""Devices, element types and token ids named on a command line: the one table and parser of each.

Every binary (generate, bench, export, train) reads --device and --dtype through these, so
"bf16" means the same everywhere and a bad value is one line naming the flag.
(Whether Triton runs in its CPU interpreter is kernels._triton.interpreting.)
"""

from __future__ import annotations

import re
from typing import Optional, Union

import torch

# Every spelling a flag may use -> its dtype. The first name of each dtype is its canonical
# (Hugging Face `torch_dtype`) name; SHORT_NAMES gives the one benchmark tables print.
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class UsageError(ValueError):
    """A bad --device or --dtype value (or another flag); the message is one line naming it."""


def parse_dtype(name: Union[str, torch.dtype], flag: str = "--dtype") -> torch.dtype:
    """A torch.dtype from any spelling in DTYPES (case-insensitive), or UsageError naming `flag`."""
    if isinstance(name, torch.dtype):
        return name
    key = str(name).strip().lower()
    if key not in DTYPES:
        raise UsageError(f"unknown {flag} {name!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


def dtype_name(dtype: torch.dtype, short: bool = False) -> str:
    """'bfloat16' (canonical, as config.json spells it), or 'bf16' with short=True."""
    if short and dtype in SHORT_NAMES:
        return SHORT_NAMES[dtype]
    return str(dtype).removeprefix("torch.")


def default_dtype(device: Union[str, torch.device]) -> torch.dtype:
    """What a binary runs in when --dtype is not given: bfloat16 on a GPU, float32 on a CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def resolve_dtype(name: Optional[Union[str, torch.dtype]], device, flag: str = "--dtype") -> torch.dtype:
    """parse_dtype, with None, '' and 'auto' meaning default_dtype(device)."""
    if name in (None, "", "auto"):
        return default_dtype(device)
    return parse_dtype(name, flag)


def parse_ids(text: str, flag: str = "--prompt_ids") -> list[int]:
    """'1,2,3' -> [1, 2, 3]: comma-separated token ids, each an integer >= 0, or UsageError naming flag."""
    try:
        ids = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        ids = [-1]
    if not all(i >= 0 for i in ids):
        raise UsageError(f"{flag} must be comma-separated integers >= 0, got {text!r}")
    return ids


def resolve_device(name: Optional[Union[str, torch.device]] = "auto", flag: str = "--device") -> torch.device:
    """A torch.device for cpu, cuda, cuda:N or auto (None or '' too: cuda when visible, else cpu).

    Raises UsageError naming `flag` for an unknown name, CUDA asked for but absent, or an
    index past the visible GPUs.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if name in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", name):
        raise UsageError(f"unknown {flag} {name!r}; expected cpu, cuda, cuda:N or auto")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"{flag} {name} requested but CUDA is not available; use {flag} cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"{flag} {name}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return torch.device(name)
