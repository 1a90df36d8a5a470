# Remote-execution worker image: the CUDA image plus BuildGrid's venv and our
# bot (tools/remote/bot.py). One container per GPU builder; see docs/remote.md.
#
#   podman build -f docker/cuda.Dockerfile -t lab-cuda .
#   podman build -f docker/worker.Dockerfile -t lab-worker .
#   podman run -d --device nvidia.com/gpu=all lab-worker \
#     --server grpc://BUILDGRID_HOST:50051 --bot-id gpu-$(hostname) --gpu
#
# Test actions name the interpreter by absolute path (@lab_python's
# interpreter_path): clients must build with --repo_env=LAB_PYTHON=/opt/lab/venv/bin/python3
# so the path they send exists here. Not built on the project's machines.
ARG BASE=lab-cuda
FROM ${BASE}

# BuildGrid 0.9.1 needs Python >= 3.13 and Ubuntu 24.04 ships 3.12: uv (from PyPI)
# installs a standalone CPython 3.13 for BuildGrid's own venv, outside /root so the
# unprivileged bot user can run it.
ENV UV_PYTHON_INSTALL_DIR=/opt/uv-python
RUN /opt/lab/venv/bin/pip install --no-cache-dir --disable-pip-version-check uv==0.13.8 \
 && /opt/lab/venv/bin/uv python install 3.13 \
 && ln -s "$(/opt/lab/venv/bin/uv python find 3.13)" /usr/local/bin/python3.13

COPY tools/remote/ /opt/lab-remote/tools/remote/
RUN BUILDGRID_PYTHON=/usr/local/bin/python3.13 /opt/lab-remote/tools/remote/venv.sh /opt/lab-remote/venv \
 && useradd --create-home --uid 10001 --shell /bin/bash bot

USER 10001
WORKDIR /home/bot
ENTRYPOINT ["/opt/lab-remote/venv/bin/python", "/opt/lab-remote/tools/remote/bot.py", \
            "--work-dir", "/home/bot/actions", "--audit-log", "/home/bot/audit.jsonl"]
