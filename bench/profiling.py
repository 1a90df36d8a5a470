"""torch.profiler helpers shared by the benches' --profile modes: save a trace, read where device time goes.

    with profile(activities=...) as prof: ...
    path = save_trace(prof, out_dir, "decode_profile")     # <out_dir>/decode_profile.json.gz
    for row in kernel_classes(prof, steps=N): ...           # gemm / attention / norm / other per step
"""

from __future__ import annotations

import gzip
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

# Kernel name -> class, first match wins (cuBLAS/cuBLASLt GEMMs are nvjet_*, *gemm*, cutlass*).
CLASSES = (
    ("gemm", re.compile(r"nvjet|gemm|cutlass|splitKreduce|_mm_", re.I)),
    ("attention", re.compile(r"decode_split|decode_reduce|flash|attn|attention|sdpa", re.I)),
    ("norm", re.compile(r"rms_norm|layer_norm", re.I)),
    ("sampling", re.compile(r"argmax|topk|sort|multinomial|softmax", re.I)),
)


def save_trace(prof, out_dir: Path, stem: str) -> Path:
    """Write prof's Chrome trace gzipped to out_dir/<stem>.json.gz (open in ui.perfetto.dev)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json.gz"
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(raw))
        with raw.open("rb") as src, gzip.open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return path


def kernel_class(name: str) -> str:
    """gemm, attention, norm, sampling or other, from a device kernel's name."""
    return next((c for c, pat in CLASSES if pat.search(name)), "other")


def kernel_classes(prof, steps: int) -> list[dict[str, Any]]:
    """Device time per step by kernel class (us), with kernel counts, largest first; from the
    profiler's self device time of every kernel-level event."""
    acc: dict[str, dict[str, float]] = {}
    for e in prof.key_averages():
        us = e.self_device_time_total
        if us <= 0 or e.key.startswith(("aten::", "lab::", "cuda")):
            continue  # an op's time is its kernels' (counted there); lab:: are our ranges
        row = acc.setdefault(kernel_class(e.key), {"us": 0.0, "kernels": 0})
        row["us"] += us / steps
        row["kernels"] += e.count / steps
    total = sum(r["us"] for r in acc.values()) or 1.0
    return sorted(({"class": c, "us_per_step": r["us"], "kernels_per_step": r["kernels"],
                    "share_pct": 100 * r["us"] / total} for c, r in acc.items()),
                  key=lambda r: -r["us_per_step"])
