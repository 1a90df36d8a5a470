# CUDA image for GPU boxes: runs the GPU scripts (bench/gpu_*.sh) and the GPU
# tests without Bazel, like the lab's GPU sessions (CUDA 13 torch, Triton, nvcc
# for kernels/_build.py).
#
#   podman build -f docker/cuda.Dockerfile -t lab-cuda .
#   podman run --rm --device nvidia.com/gpu=all -v "$PWD:/work/lab" -e OUT=/work/lab/out \
#     lab-cuda bash bench/gpu_run.sh
#
# Not built on the project's machines (no container registry is reachable there).
FROM nvidia/cuda:13.0.1-cudnn-devel-ubuntu24.04

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates g++ git python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The lock pins the CPU torch wheel; here the CUDA build of the same torch line
# comes from the CUDA wheel index, and the rest of the lock is installed as pinned.
COPY requirements_lock.txt /opt/lab/requirements_lock.txt
RUN python3 -m venv /opt/lab/venv \
 && grep -v -E '^(torch|triton)==' /opt/lab/requirements_lock.txt > /tmp/lock-no-torch.txt \
 && /opt/lab/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --index-url https://download.pytorch.org/whl/cu130 torch triton \
 && /opt/lab/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /tmp/lock-no-torch.txt \
 && rm /tmp/lock-no-torch.txt
ENV PATH=/opt/lab/venv/bin:$PATH \
    LAB_PYTHON=/opt/lab/venv/bin/python3

WORKDIR /work/lab
CMD ["bash", "bench/gpu_run.sh"]
