# The triage service: docker build -f docker/triage.Dockerfile -t lab-triage .
# docker run -p 127.0.0.1:8377:8377 -e LAB_TRIAGE_TOKEN=... -v triage-db:/data lab-triage
# Bound to 0.0.0.0 inside the container, so the service refuses to start without a token.
FROM python:3.12-slim
WORKDIR /lab
COPY requirements_lock.txt /lab/
RUN grep -iE '^(fastapi|starlette|uvicorn|h11|anyio|sniffio|idna|pydantic|pydantic_core|annotated-types|typing_extensions|typing-inspection|click|prometheus_client|psycopg|psycopg-binary|PyYAML)==' requirements_lock.txt > /lab/requirements_triage.txt \
    && pip install --no-cache-dir -r /lab/requirements_triage.txt
COPY triage/ /lab/triage/
COPY export/__init__.py export/failures.py /lab/export/
ENV LAB_TRIAGE_DB=/data/triage.db PYTHONPATH=/lab
RUN mkdir -p /data && chown 65534:65534 /data
VOLUME /data
EXPOSE 8377
USER 65534
CMD ["python", "-m", "triage.serve", "--host", "0.0.0.0", "--port", "8377"]
