"""Macros for the repeated target shapes of the lab.

- `lab_py_test`: a pytest-driven py_test; `gpu = True` adds the `requires-gpu`
  tag (filtered out by default, run with `--config=cuda`) and needs an
  execution platform with a GPU (remote: //tools/remote:gpu).
- `cuda_library`: .cu files compiled by nvcc for sm_80 and sm_90 plus sm_90 PTX.
- `pybind_extension`: a Python extension (.so) linking pybind11 and the static
  CUDA runtime, with no libtorch dependency.
- `if_cuda`: pick a list depending on whether a CUDA toolkit was found.

Without a CUDA toolkit the CUDA targets are incompatible and skipped.
"""

load("@local_cuda//:defs.bzl", "CUDA_FOUND", "NVCC")
load("@rules_cc//cc:cc_binary.bzl", "cc_binary")
load("@rules_cc//cc:cc_library.bzl", "cc_library")
load("@rules_python//python:defs.bzl", "py_test")

# Real GPU code for A100 (sm_80) and H100/H200 (sm_90), plus PTX that newer
# GPUs JIT-compile. Keep in sync with kernels/_build.py (the no-Bazel fallback).
CUDA_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]

NVCC_FLAGS = [
    "-O3",
    "-std=c++17",
    "--use_fast_math",
    "-Xcompiler=-fPIC",
    "-Xcompiler=-fvisibility=hidden",
]

GPU_TAGS = ["requires-gpu"]

GPU_PLATFORM_CONSTRAINT = "//tools/remote:has_gpu"

def _cuda_compat():
    return [] if CUDA_FOUND else ["@platforms//:incompatible"]

def if_cuda(if_true, if_false = []):
    """`if_true` when a CUDA toolkit was found, else `if_false` (for data/deps lists).

    Args:
      if_true: value used with CUDA.
      if_false: value used without CUDA.

    Returns:
      One of the two.
    """
    return if_true if CUDA_FOUND else if_false

def lab_py_test(name, srcs, deps = [], data = [], gpu = False, tags = [], size = "medium", **kwargs):
    """A py_test that runs `srcs` under pytest.

    Args:
      name: target name.
      srcs: the test files (test_*.py).
      deps: py_library dependencies.
      data: runtime files.
      gpu: tag the test `requires-gpu` (it must also skip itself without a GPU).
      tags: extra tags.
      size: Bazel test size.
      **kwargs: passed to py_test.
    """
    py_test(
        name = name,
        srcs = srcs + ["//tools/testing:pytest_main.py"],
        main = "//tools/testing:pytest_main.py",
        args = ["$(rootpath {})".format(s) for s in srcs],
        # Failed parity comparisons go to the failure log (tools/testing/pytest_main.py enables it).
        deps = deps + ["//triage:pytest_plugin"],
        data = data,
        python_version = "PY3",
        size = size,
        tags = tags + (GPU_TAGS if gpu else []),
        # Remote execution routes GPU tests to a GPU execution platform (tools/remote/BUILD.bazel).
        exec_compatible_with = [GPU_PLATFORM_CONSTRAINT] if gpu else [],
        **kwargs
    )

def cuda_library(name, srcs, hdrs = [], deps = [], copts = [], visibility = None):
    """Compiles .cu sources with nvcc into a static, position-independent cc_library.

    Args:
      name: target name.
      srcs: .cu files.
      hdrs: headers they include (workspace-relative includes work).
      deps: cc_library dependencies (headers only; nvcc sees their files).
      copts: extra nvcc flags.
      visibility: Bazel visibility.
    """
    objs = []
    for src in srcs:
        stem = src.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        obj = "_objs/{}/{}.pic.o".format(name, stem)
        native.genrule(
            name = "{}_{}_nvcc".format(name, stem),
            srcs = [src] + hdrs,
            outs = [obj],
            # nvcc names its temporaries after its pid (tmpxft_<pid>_...): in sandboxes with their own pid
            # namespace two concurrent nvcc actions share those names in /tmp and clobber each other's
            # cubins ("fatbinary fatal: Could not open input file"). Each action gets its own TMPDIR.
            cmd = " ".join(
                ["tmp=$$(mktemp -d) && TMPDIR=$$tmp {} -c $(location {}) -o $@ -I.".format(NVCC, src)] +
                CUDA_ARCH_FLAGS + NVCC_FLAGS + copts + ["&& rm -rf $$tmp"],
            ),
            message = "nvcc {}".format(src),
            target_compatible_with = _cuda_compat(),
        )
        objs.append(obj)
    cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + ["@local_cuda//:cudart_static"],
        alwayslink = True,
        linkstatic = True,
        target_compatible_with = _cuda_compat(),
        visibility = visibility,
    )

def pybind_extension(name, srcs, deps = [], visibility = None):
    """Links `name`.so, a pybind11 extension module, from C++ sources and deps.

    Args:
      name: module name; the output is `name`.so, imported as `name`.
      srcs: C++ binding sources.
      deps: cc_library dependencies (for example a cuda_library).
      visibility: Bazel visibility.
    """
    cc_binary(
        name = name + ".so",
        srcs = srcs,
        deps = deps + ["@lab_python//:pybind11"],
        copts = ["-fvisibility=hidden", "-std=c++17"],
        linkshared = True,
        linkstatic = True,
        target_compatible_with = _cuda_compat(),
        visibility = visibility,
    )
