"""A small client of the triage service for scripts and notebooks (standard library only).

    from triage.client import Client
    c = Client("http://127.0.0.1:8377", token=None)
    out = c.ingest(record)            # {"failure_id", "status", "fixes", "kb", ...}
    c.feedback(fix_id=out["fixes"][0]["fix_id"], worked=True)
    c.feedback(failure_id=out["failure_id"], my_fix="pinned onnxscript to 0.5")
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Mapping, Optional


class TriageError(Exception):
    """The service answered with an error (status and message) or could not be reached."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status


class Client:
    """Calls the service's routes; each returns the decoded JSON answer."""

    def __init__(self, url: str = "http://127.0.0.1:8377", token: Optional[str] = None, timeout: float = 30.0):
        self.url, self.token, self.timeout = url.rstrip("/"), token, timeout

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read()).get("error", e.reason)
            except ValueError:
                message = e.reason
            raise TriageError(e.code, message) from None
        except (urllib.error.URLError, OSError) as e:
            raise TriageError(0, f"{self.url}: unreachable ({e})") from None
        return json.loads(raw) if raw else None

    def health(self) -> dict:
        """GET /healthz."""
        return self._call("GET", "/healthz")

    def ingest(self, record: Mapping[str, Any]) -> dict:
        """Store a failure-log record; its suggestions."""
        return self._call("POST", "/ingest", dict(record))

    def suggest(self, record: Optional[Mapping[str, Any]] = None, failure_id: Optional[int] = None) -> dict:
        """Suggestions for a record, or for a stored failure."""
        return self._call("POST", "/suggest", {"failure_id": failure_id} if failure_id is not None else dict(record))

    def feedback(self, **fields: Any) -> dict:
        """fix_id + worked, or failure_id + my_fix (+ note), or failure_id + kb_id + worked."""
        return self._call("POST", "/feedback", {k: v for k, v in fields.items() if v is not None})

    def report(self, kind: str, body: Mapping[str, Any]) -> dict:
        """Store a divergence report or advice."""
        return self._call("POST", "/reports", {"kind": kind, "body": dict(body)})

    def metrics(self) -> str:
        """The Prometheus text."""
        req = urllib.request.Request(self.url + "/metrics")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            return resp.read().decode("utf-8")
