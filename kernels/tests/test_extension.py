"""The CUDA extension imports everywhere and fails clearly where there is no GPU."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kernels import _ext

# Not resolved: under Bazel the test file is a symlink in the runfiles tree,
# and the built _C.so sits beside the kernels/ sources there.
BAZEL_SO = Path(__file__).parent.parent / "_C.so"


def _cuobjdump():
    """cuobjdump from PATH, or the nvidia-cuda-cuobjdump wheel in requirements_lock.txt."""
    found = shutil.which("cuobjdump")
    if found:
        return found
    for root in sys.path:
        candidate = Path(root) / "nvidia" / "cu13" / "bin" / "cuobjdump"
        if candidate.exists():
            return str(candidate)
    return None


def _ext_or_skip():
    try:
        return _ext.load()
    except ImportError as e:
        pytest.skip(f"extension not available here: {e}")


def test_extension_imports_and_reports_devices():
    ext = _ext_or_skip()
    assert ext.device_count() >= 0
    assert "vector_add" in dir(ext)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU error path")
def test_call_without_gpu_raises_clear_error():
    ext = _ext_or_skip()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        ext.vector_add(0, 0, 0, 16, 1.0, 0, 0)


def test_dtype_code_rejects_unsupported():
    with pytest.raises(TypeError, match="float32, float16 and bfloat16"):
        _ext.dtype_code(torch.int8)


@pytest.mark.skipif(not BAZEL_SO.exists(), reason="the Bazel-built _C.so is not beside this test")
@pytest.mark.skipif(_cuobjdump() is None, reason="cuobjdump not installed")
def test_bazel_extension_holds_sm80_sm90_cubins_and_ptx():
    tool = _cuobjdump()
    elf = subprocess.run([tool, "--list-elf", str(BAZEL_SO)], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([tool, "--list-ptx", str(BAZEL_SO)], capture_output=True, text=True, check=True).stdout
    assert "sm_90.cubin" in elf and "sm_80.cubin" in elf, elf
    assert "sm_90.ptx" in ptx, ptx


def test_extension_links_no_libtorch():
    if not BAZEL_SO.exists():
        pytest.skip("the Bazel-built _C.so is not beside this test")
    deps = subprocess.run(["ldd", str(BAZEL_SO)], capture_output=True, text=True).stdout
    assert "libtorch" not in deps and "libc10" not in deps, deps
