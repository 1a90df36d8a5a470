"""Exports of the lab's Llama to other runtimes, each ending in a parity check vs eager.

Libraries (no flags, importable together): common, trt_llm_ckpt, aoti_step, onnx_step.
Binaries (absl flags; `python3 -m export.<name>` or `tools/bazel run //export:<name>`):
trt_llm, aoti, onnx, torch_trt.
"""
