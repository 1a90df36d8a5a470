# The `triage` service image: //triage:serve (the failure / divergence assistant's
# HTTP service) on the dev image's environment. triage is being written in parallel:
# this image references its Bazel target only, and is not built on the project's
# machines.
#
#   podman build -f docker/dev.Dockerfile -t lab-dev .
#   podman build -f docker/triage.Dockerfile -t lab-triage .
#   podman run -d -p 127.0.0.1:8377:8377 -e LAB_TRIAGE_TOKEN=... lab-triage
ARG BASE=lab-dev
FROM ${BASE}

COPY . /work/lab
RUN tools/bazel build //triage:serve

EXPOSE 8377
# Binds to all interfaces inside the container only; publish the port on 127.0.0.1
# (as above) or behind a proxy; serve refuses a non-loopback host without $LAB_TRIAGE_TOKEN.
ENTRYPOINT ["bazel-bin/triage/serve", "--host", "0.0.0.0", "--port", "8377"]
