"""Build the evaluation set: real failures of the lab's own code with planted faults and bad inputs,
plus error texts quoted from public issue threads (each with its link).

    python3 -m triage.eval.make_eval --out triage/eval/failures.jsonl

Each line: {"class": ..., "origin": "lab" | URL, "record": <failure-log record, schema 1>}.
Lab failures are produced by running the code and capturing the exception with
export.failures.make_record (the same function the export binaries use), each occurrence with
other shapes, sizes, paths or values than the others of its class.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import sys
import tempfile
from pathlib import Path

import torch

from export import failures

# --- lab failures: (class, binary, function raising the failure) ---------------------------


def _tiny(vocab=96, dim=32, layers=1, heads=4, kv=2, inter=64, seed=0):
    from model.loader import load

    return load(_cfg(vocab, dim, layers, heads, kv, inter), seed=seed)


def _cfg(vocab, dim, layers, heads, kv, inter):
    from model.config import ModelConfig

    return ModelConfig(vocab_size=vocab, dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=kv,
                       intermediate_size=inter, max_seq_len=64)


def token_out_of_range(vocab, dim, bad):
    model = _tiny(vocab=vocab, dim=dim)
    model(torch.tensor([[1, 2, bad]]))


def wrong_weight_shape(dim, wrong):
    model = _tiny(dim=dim)
    layer = model.model.layers[0].mlp
    layer.up_proj.weight = torch.nn.Parameter(torch.randn(layer.up_proj.weight.shape[0], wrong))
    model(torch.tensor([[3, 4, 5, 6]]))


def half_cast_layer(dtype, dim):
    model = _tiny(dim=dim)
    model.model.layers[0].self_attn.to(dtype)  # planted: one module cast, the rest fp32
    model(torch.tensor([[3, 4, 5]]))


def bad_config(**kw):
    from model.config import ModelConfig

    ModelConfig(**kw)


def missing_checkpoint(path):
    from model.loader import load

    load(path)


def corrupt_safetensors(tmp, size):
    from model.loader import load

    d = Path(tmp) / f"ckpt_{size}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                                               "num_attention_heads": 4, "intermediate_size": 64}))
    (d / "model.safetensors").write_bytes(struct.pack("<Q", 10 ** 12) + os.urandom(size))
    load(str(d))


def parity_fault(shape, fault, seed):
    from parity.tolerance import Tol, assert_close

    g = torch.Generator().manual_seed(seed)
    ref = torch.randn(*shape, generator=g)
    got = ref.clone()
    if fault == "scale":
        got *= 1.01
    elif fault == "column":
        got[..., 1] = 0
    else:
        got.view(-1)[seed % got.numel()] = float("nan")
    assert_close(got, ref, Tol(atol=1e-5, rtol=1e-5), what=f"rms_norm {tuple(shape)}")


def output_dir_taken(tmp, name):
    from model.output_dir import prepare_output_dir

    d = Path(tmp) / name
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    prepare_output_dir(str(d), writer="export.onnx", flag="--output")


def bad_prompt_ids(text):
    from model.device import parse_ids

    parse_ids(text)


def bad_sampling(temperature, top_p):
    from decoding.sampling import check_sampling

    check_sampling(temperature=temperature, top_k=None, top_p=top_p)


def bad_dtype(name):
    from model.device import parse_dtype

    parse_dtype(name)


def export_data_dependent(n):
    class Gate(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # planted: data-dependent Python branch
                return x * 2
            return x - 1

    torch.export.export(Gate(), (torch.randn(n, 8),), strict=False)


def bench_wrong(bench, variants):
    """A bench WRONG gate's record, as bench.common.exit_on_failures writes it."""
    message = f"{bench}: {len(variants)} WRONG or FAILED: {', '.join(variants)}"
    return failures.make_event(bench, "wrong", "BenchWrong", message, context={"variants": variants},
                               argv=[bench])


def lab_cases(tmp):
    """(class, binary, callable) for every lab failure of the set."""
    c = []
    for vocab, dim, bad in [(96, 32, 500), (128, 48, 1000), (80, 32, 81), (200, 64, 4096), (64, 16, 99999)]:
        c.append(("token_out_of_range", "model.generate", lambda v=vocab, d=dim, b=bad: token_out_of_range(v, d, b)))
    for dim, wrong in [(32, 48), (48, 40), (64, 16), (32, 8), (16, 100)]:
        c.append(("weight_shape", "export.aoti", lambda d=dim, w=wrong: wrong_weight_shape(d, w)))
    for dt, dim in [(torch.bfloat16, 32), (torch.float16, 32), (torch.float64, 48), (torch.bfloat16, 64),
                    (torch.float16, 16)]:
        c.append(("dtype_mismatch", "export.onnx_export", lambda t=dt, d=dim: half_cast_layer(t, d)))
    for kw in [dict(dim=30, n_heads=4), dict(dim=100, n_heads=8), dict(dim=64, n_heads=6), dict(dim=12, n_heads=5),
               dict(dim=130, n_heads=16)]:
        c.append(("config_heads", "export.trt_llm", lambda k=kw: bad_config(**k)))
    for p in ["/data/ckpts/llama-8b", "/home/u/models/llama3_1b", "models/lab-smal", "/mnt/x/ckpt-00042",
              "./checkpoints/run_7/final"]:
        c.append(("missing_checkpoint", "model.generate", lambda q=p: missing_checkpoint(q)))
    for size in (64, 300, 1200, 4096, 10):
        c.append(("corrupt_weights", "export.aoti", lambda s=size: corrupt_safetensors(tmp, s)))
    for shape, fault, seed in [((4, 64), "scale", 0), ((2, 8, 128), "column", 1), ((19, 111), "scale", 2),
                               ((3, 5, 7), "column", 3), ((1, 4096), "scale", 4)]:
        c.append(("parity_mismatch", "pytest parity/test_kernels.py",
                  lambda s=shape, f=fault, sd=seed: parity_fault(s, f, sd)))
    for name in ("out_onnx", "exports/aoti_pkg", "trt_ckpt", "o", "model_int8"):
        c.append(("output_dir_taken", "export.onnx_export",
                  lambda n=name: output_dir_taken(tmp, n.replace("/", "_"))))
    for n in (2, 4, 7, 16):
        c.append(("data_dependent_guard", "export.aoti", lambda k=n: export_data_dependent(k)))
    # Unrelated (no fix recorded for these classes in the evaluation).
    for text in ("1,2,x", "1;;2", "abc", "3, 4, -1", "1 2 3.5"):
        c.append(("bad_prompt_ids", "model.generate", lambda t=text: bad_prompt_ids(t)))
    for t, p in [(-1.0, None), (0.7, 1.5), (float("nan"), None), (1.0, 0.0), (-0.5, 0.9)]:
        c.append(("bad_sampling", "model.generate", lambda a=t, b=p: bad_sampling(a, b)))
    for name in ("float8", "fp12", "int3", "bfloat", "complex32"):
        c.append(("bad_dtype", "export.onnx_export", lambda n=name: bad_dtype(n)))
    return c


BENCH_WRONG = [("bench.decode", ["eager@4", "graphs@16"]), ("bench.prefill", ["paged flash 512 triton"]),
               ("bench.kernel_ops", ["rms_norm bf16 M=4096 width=4096 cuda"]), ("bench.decode", ["compiled@1"]),
               ("bench.flash_attention", ["decode bf16 B=8 S=4096 flash", "decode bf16 B=1 S=512 triton"])]

# --- public failures: (class, URL, type, message), quoted from the linked thread -------------------------
PUBLIC = [
    ("triton_shared_memory", "https://github.com/triton-lang/triton/issues/8182", "triton.runtime.errors.OutOfResources",
     "out of resource: shared memory, Required: 131072, Hardware limit: 101376. Reducing block sizes or `num_stages` may help."),
    ("triton_shared_memory", "https://github.com/vllm-project/vllm/issues/12498", "triton.runtime.errors.OutOfResources",
     "out of resource: shared memory, Required: 66560, Hardware limit: 65536. Reducing block sizes or `num_stages` may help."),
    ("triton_shared_memory", "https://github.com/InternLM/lmdeploy/issues/2451", "triton.runtime.autotuner.OutOfResources",
     "out of resource: shared memory, Required: 108672, Hardware limit: 101376. Reducing block sizes or `num_stages` may help."),
    ("triton_shared_memory", "https://github.com/sasha0552/pascal-pkgs-ci/issues/50", "triton.runtime.errors.OutOfResources",
     "out of resource: shared memory, Required: 98304, Hardware limit: 49152. Reducing block sizes or `num_stages` may help."),
    ("nccl_system_error", "https://github.com/NVIDIA/Megatron-LM/issues/71", "RuntimeError",
     "NCCL error in: ../torch/lib/c10d/ProcessGroupNCCL.cpp:839, unhandled system error, NCCL version 2.8.3\n"
     "ncclSystemError: System call (socket, malloc, munmap, etc) failed."),
    ("nccl_system_error", "https://github.com/NVIDIA/nccl/issues/328", "RuntimeError",
     "NCCL error in ProcessGroupNCCL.cpp:290, unhandled system error"),
    ("nccl_system_error", "https://github.com/MiniMax-AI/MiniMax-01/issues/42", "torch.distributed.DistBackendError",
     "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.hpp:268, unhandled system error "
     "(run with NCCL_DEBUG=INFO for details), NCCL version 2.21.5"),
    ("nccl_system_error", "https://github.com/NVIDIA/nccl/issues/1466", "RuntimeError",
     "NCCL error: unhandled system error (run with NCCL_DEBUG=INFO for details)"),
    ("cuda_oom", "https://github.com/murong-xu/CADS/issues/4", "torch.OutOfMemoryError",
     "CUDA out of memory. Tried to allocate 22.78 GiB. GPU 0 has a total capacity of 31.47 GiB of which 12.73 GiB "
     "is free. Including non-PyTorch memory, this process has 18.73 GiB memory in use. Of the allocated memory 9.08 "
     "GiB is allocated by PyTorch, and 9.35 GiB is reserved by PyTorch but unallocated. If reserved but unallocated "
     "memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
    ("cuda_oom", "https://github.com/kaito-project/kaito/issues/976", "torch.OutOfMemoryError",
     "CUDA out of memory. Tried to allocate 546.00 MiB. GPU 0 has a total capacity of 15.77 GiB of which 514.19 MiB "
     "is free. Process 562167 has 15.25 GiB memory in use. Of the allocated memory 13.73 GiB is allocated by "
     "PyTorch, with 46.00 MiB allocated in private pools (e.g., CUDA Graphs), and 736.86 MiB is reserved by PyTorch "
     "but unallocated. If reserved but unallocated memory is large try setting "
     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
    ("cuda_oom", "https://github.com/huggingface/meshgen/issues/7", "torch.OutOfMemoryError",
     "CUDA out of memory. Tried to allocate 1002.00 MiB. GPU 0 has a total capacity of 8.00 GiB of which 0 bytes is "
     "free. Of the allocated memory 13.98 GiB is allocated by PyTorch, and 129.48 MiB is reserved by PyTorch but "
     "unallocated. If reserved but unallocated memory is large try setting "
     "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
    ("cuda_oom", "https://github.com/OpenHelix-Team/cobra/issues/24", "torch.OutOfMemoryError",
     "CUDA out of memory. Tried to allocate 158.00 MiB. GPU 0 has a total capacity of 23.69 GiB of which 115.69 MiB "
     "is free. Process 21422 has 23.57 GiB memory in use. Of the allocated memory 22.14 GiB is allocated by "
     "PyTorch, and 910.35 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large "
     "try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation."),
    ("onnx_unsupported_op", "https://github.com/pytorch/pytorch/issues/49005", "RuntimeError",
     "Exporting the operator var to ONNX opset version 10 is not supported. Please open a bug to request ONNX "
     "export support for the missing operator."),
    ("onnx_unsupported_op", "https://github.com/huggingface/optimum/pull/1331", "torch.onnx.errors.UnsupportedOperatorError",
     "Exporting the operator 'aten::tril' to ONNX opset version 13 is not supported. Support for this operator was "
     "added in version 14, try exporting with this version."),
    ("onnx_unsupported_op", "https://github.com/roboflow/rf-detr/issues/1204", "UnsupportedOperatorError",
     "Exporting the operator 'aten::_upsample_bicubic2d_aa' to ONNX opset version 17 is not supported"),
    ("onnx_unsupported_op", "https://github.com/pytorch/pytorch/issues/70497", "RuntimeError",
     "Exporting the operator uniform to ONNX opset version 10 is not supported"),
    ("pip_resolution", "https://github.com/pypa/pip/issues/11994", "pip.ResolutionImpossible",
     "Cannot install glue-vispy-viewers==1.0.6 and glue-vispy-viewers==1.0.7 because these package versions have "
     "conflicting dependencies.\nThe conflict is caused by:\n    glue-vispy-viewers 1.0.7 depends on vispy>=0.9.1\n"
     "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/"
     "#dealing-with-dependency-conflicts"),
    ("pip_resolution", "https://github.com/pypa/pip/issues/13422", "pip.ResolutionImpossible",
     "Cannot install None because these package versions have conflicting dependencies.\nThe conflict is caused "
     "by:\n    commoncode 0.0.0 depends on click>=8.2.0\n    The user requested (constraint) click==8.2.1\n"
     "ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/"
     "#dealing-with-dependency-conflicts"),
    ("pip_resolution", "https://github.com/pypa/pip/issues/9168", "pip.ResolutionImpossible",
     "Cannot install aiobotocore==1.1.2 and botocore 1.17.63 because these package versions have conflicting "
     "dependencies.\nERROR: ResolutionImpossible: for help visit "
     "https://pip.pypa.io/en/latest/user_guide/#fixing-conflicting-dependencies"),
    ("bazel_no_package", "https://github.com/zml/zml/issues/291", "BazelTargetFailed",
     "no such package 'llama': BUILD file not found in any of the following directories. Add a BUILD file to a "
     "directory to mark it as a package.\n - llama"),
    ("bazel_no_package", "https://github.com/zml/zml/issues/291", "BazelTargetFailed",
     "no such package 'mnist': BUILD file not found in any of the following directories. Add a BUILD file to a "
     "directory to mark it as a package.\n - mnist"),
    ("bazel_no_package", "https://github.com/apache/brpc/issues/2233", "BazelTargetFailed",
     "Analysis of target '//libscu/lib/link:context' failed; build aborted: no such package 'bazel/config': BUILD "
     "file not found in any of the following directories. Add a BUILD file to a directory to mark it as a package."),
    # Unrelated public failures (no fix recorded for their classes).
    ("data_dependent_guard", "https://github.com/pytorch/pytorch/issues/147672", "torch._dynamo.exc.UserError",
     "Could not guard on data-dependent expression Eq(256*u0, 256) (unhinted: Eq(256*u0, 256))."),
    ("data_dependent_guard", "https://github.com/pytorch/pytorch/issues/157355",
     "torch.fx.experimental.symbolic_shapes.GuardOnDataDependentSymNode",
     "Could not guard on data-dependent expression Eq(u0, 1) (unhinted: Eq(u0, 1)). (Size-like symbols: none)"),
    ("trt_no_impl", "https://github.com/yuanyang1991/birefnet_tensorrt/issues/4", "tensorrt.BuilderError",
     "IBuilder::buildSerializedNetwork: Error Code 10: Internal Error (Could not find any implementation for node "
     "{ForeignNode[ONNXTRT_ShapeShuffle_37148_output[Constant].../bb/Reshape_4 + /bb/Transpose_4]}"),
    ("torch_trt_engine", "https://github.com/pytorch/TensorRT/issues/536", "RuntimeError",
     "[Error thrown at core/conversion/conversionctx/ConversionCtx.cpp:149] Building TensorRT engine failed"),
    ("inductor_cpp", "https://github.com/pytorch/pytorch/issues/152172", "torch._inductor.exc.InductorError",
     "CppCompileError: C++ compile error"),
    ("bazel_bzl_package", "https://github.com/bazelbuild/bazel/issues/7094", "BazelTargetFailed",
     "error loading package '': Every .bzl file must have a corresponding package, but 'dir/file.bzl' does not have "
     "one. Please create a BUILD file in the same or any parent directory."),
]


def build(out: Path) -> int:
    """Run every lab case, quote every public one; write the JSONL set; returns the count."""
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for cls, binary, fn in lab_cases(tmp):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - the failure is what we collect
                rec = failures.make_record(binary, exc, "error", flags={}, argv=[binary])
                lines.append({"class": cls, "origin": "lab", "record": rec})
            else:
                raise SystemExit(f"planted fault of class {cls} did not fail")
    for bench, variants in BENCH_WRONG:
        lines.append({"class": "bench_wrong", "origin": "lab", "record": bench_wrong(bench, variants)})
    for cls, url, etype, message in PUBLIC:
        rec = failures.make_event("quoted", "error", etype, message, context={"source": url}, argv=[])
        lines.append({"class": cls, "origin": url, "record": rec})
    tmp_out = out.with_name(out.name + ".tmp")
    with open(tmp_out, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, sort_keys=True) + "\n")
    os.replace(tmp_out, out)
    return len(lines)


def main(argv=None) -> int:
    """Write the evaluation set."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(Path(__file__).with_name("failures.jsonl")))
    a = p.parse_args(argv)
    n = build(Path(a.out))
    print(f"{n} failures written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
