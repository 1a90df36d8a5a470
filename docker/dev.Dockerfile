# CPU dev image: Debian 12, Debian's bazel-bootstrap (4.2.3), the C++ toolchain,
# PostgreSQL (for tools/remote and triage's tests) and the lab's Python
# environment installed from requirements_lock.txt (CPU torch).
#
#   podman build -f docker/dev.Dockerfile -t lab-dev .
#   podman run --rm -it -v "$PWD:/work/lab" lab-dev tools/bazel test //...
#
# Not built on the project's machines (no container registry is reachable
# there); linted in CI with hadolint (docker/lint.sh).
FROM debian:bookworm-slim

ARG DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      bazel-bootstrap ca-certificates g++ git postgresql python3 python3-dev python3-venv \
 && rm -rf /var/lib/apt/lists/*

# The pinned environment, outside the workspace so a bind-mounted checkout reuses it:
# @lab_python takes it through LAB_PYTHON instead of building its own venv.
COPY requirements_lock.txt /opt/lab/requirements_lock.txt
RUN python3 -m venv /opt/lab/venv \
 && /opt/lab/venv/bin/pip install --no-cache-dir --disable-pip-version-check -r /opt/lab/requirements_lock.txt
ENV LAB_PYTHON=/opt/lab/venv/bin/python3

WORKDIR /work/lab
CMD ["tools/bazel", "test", "//..."]
