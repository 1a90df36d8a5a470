# The triage service: docker build -f docker/triage.Dockerfile -t lab-triage .
# docker run -p 8377:8377 -e LAB_TRIAGE_TOKEN=... -v triage-db:/data lab-triage
# Bound to 0.0.0.0 inside the container, so the service refuses to start without a token.
FROM python:3.12-slim
WORKDIR /lab
COPY requirements_lock.txt /lab/
RUN pip install --no-cache-dir $(grep -iE '^(fastapi|starlette|uvicorn|h11|anyio|sniffio|idna|pydantic|pydantic_core|annotated-types|typing_extensions|typing-inspection|click|prometheus_client|psycopg|psycopg-binary|PyYAML)==' requirements_lock.txt)
COPY triage/ /lab/triage/
COPY export/__init__.py export/failures.py /lab/export/
ENV LAB_TRIAGE_DB=/data/triage.db PYTHONPATH=/lab
VOLUME /data
EXPOSE 8377
USER nobody
CMD ["python", "-m", "triage.serve", "--host", "0.0.0.0", "--port", "8377"]
