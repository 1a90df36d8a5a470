"""Exports of the lab's Llama to other runtimes, each ending in a parity check vs eager.

Libraries (no flags, importable together): common, checks (the shared gates), kv_step (the
one step every export traces), aoti_package, onnx_step, trt_llm_ckpt, failures.
Binaries (absl flags; `python3 -m export.<module>` or `tools/bazel run //export:<target>`):
trt_llm, aoti, onnx_export (target //export:onnx), torch_trt.
"""
