"""Fallback build of `kernels._C` where Bazel is absent (for example the GPU box).

Compiles the same sources with the same nvcc flags as //kernels:_C (see
tools/build_defs/defs.bzl) into a cache folder keyed by their content hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

# Keep in sync with CUDA_ARCH_FLAGS and NVCC_FLAGS in tools/build_defs/defs.bzl.
CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]
NVCC_FLAGS = ["-O3", "-std=c++17", "--use_fast_math", "-Xcompiler=-fPIC", "-Xcompiler=-fvisibility=hidden"]

CSRC = Path(__file__).resolve().parent / "csrc"
REPO_ROOT = CSRC.parents[1]


class BuildError(RuntimeError):
    """The CUDA extension could not be built; the message says why and what to do."""


def find_nvcc() -> str:
    """Returns the nvcc path ($CUDA_HOME/$CUDA_PATH, PATH, /usr/local/cuda) or raises BuildError."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and (Path(root) / "bin" / "nvcc").exists():
            return str(Path(root) / "bin" / "nvcc")
    found = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if not found:
        raise BuildError("kernels._C is not built and nvcc was not found: install the CUDA toolkit or set CUDA_HOME")
    return found


def sources() -> list[Path]:
    """All files that go into the extension (sources and headers), sorted."""
    return sorted(p for p in CSRC.iterdir() if p.suffix in (".cu", ".cpp", ".h", ".cuh"))


def cache_dir() -> Path:
    """Folder for built extensions: $LAB_CACHE or ~/.cache/lab."""
    return Path(os.environ.get("LAB_CACHE", Path.home() / ".cache" / "lab")) / "kernels"


def build(verbose: bool = False) -> Path:
    """Builds (or reuses) _C.so from kernels/csrc and returns its path."""
    try:
        import pybind11
    except ImportError as e:
        raise BuildError("building kernels._C needs pybind11: pip install pybind11") from e
    nvcc = find_nvcc()
    digest = hashlib.sha256()
    for path in sources():
        digest.update(path.name.encode() + path.read_bytes())
    digest.update(" ".join(CUDA_ARCH_FLAGS + NVCC_FLAGS + [sys.version]).encode())
    out_dir = cache_dir() / digest.hexdigest()[:16]
    target = out_dir / "_C.so"
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"_C.{os.getpid()}.so"
    compile_units = [str(p) for p in sources() if p.suffix in (".cu", ".cpp")]
    cmd = [
        nvcc, "-shared", "--threads", "0", *CUDA_ARCH_FLAGS, *NVCC_FLAGS,  # --threads: the arch targets in parallel
        f"-I{REPO_ROOT}", f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
        *compile_units, "-o", str(tmp),
    ]
    print(f"kernels: building the CUDA extension with {nvcc} (once, ~1 min) -> {target}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=not verbose, text=True)
    if proc.returncode != 0:
        raise BuildError(f"nvcc failed building kernels._C:\n{proc.stderr[-4000:] if proc.stderr else ''}")
    os.replace(tmp, target)
    return target


if __name__ == "__main__":
    print(build(verbose=True))
