"""Bazel Build Event Protocol (JSON) -> failure-log records: failed actions, targets and tests.

Bazel writes one JSON object per line with `--build_event_json_file=FILE` (our
`--config=triage`). The events used (names as in build_event_stream.proto):
  started              {"id": {"started": {}}, "started": {"command", "uuid", "buildToolVersion", ...}}
  workspaceStatus      {"workspaceStatus": {"item": [{"key": "BUILD_SCM_REVISION", "value": ...}]}}
  action (failed)      {"id": {"actionCompleted": {"primaryOutput", "label"}},
                        "action": {"success": false, "type", "exitCode", "stderr": {"uri"|"contents"},
                                   "commandLine": [...], "failureDetail": {"message"}}}
  targetCompleted      {"id": {"targetCompleted": {"label"}}, "completed": {"success": false,
                                   "failureDetail": {"message"}}}
  aborted              {"id": {...}, "aborted": {"reason", "description"}}
  testSummary          {"id": {"testSummary": {"label"}}, "testSummary": {"overallStatus": "FAILED", ...}}
  testResult           {"id": {"testResult": {"label", "run", "shard", "attempt"}},
                        "testResult": {"status": "FAILED", "testActionOutput": [{"name": "test.log", "uri"}]}}
Logs referenced by file:// URIs are read (their last 4000 characters) when they exist.
"""

from __future__ import annotations

import json
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

TAIL = 4000


class BEPError(Exception):
    """A file that is not a Build Event Protocol JSON stream."""


def _read_uri(uri: str) -> str:
    if not uri or not uri.startswith("file://"):
        return ""
    path = Path(urllib.parse.unquote(urllib.parse.urlparse(uri).path))
    try:
        return path.read_text(encoding="utf-8", errors="replace")[-TAIL:]
    except OSError:
        return ""


def events(path: Path) -> Iterator[dict]:
    """The events of a --build_event_json_file, one JSON object per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise BEPError(f"--bep {path}: cannot read ({e.strerror})") from None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            ev = json.loads(line)
        except ValueError as e:
            raise BEPError(f"--bep {path}:{lineno}: not a JSON build event ({e})") from None
        if not isinstance(ev, dict) or "id" not in ev:
            raise BEPError(f"--bep {path}:{lineno}: not a build event (no 'id')")
        yield ev


def failures(path: Path) -> list[dict[str, Any]]:
    """One (binary, kind, type, message, context) dict per failed action, target, test or abort."""
    started: dict[str, Any] = {}
    revision = None
    out = []
    for ev in events(path):
        eid = ev["id"]
        if "started" in ev:
            started = ev["started"]
        elif "workspaceStatus" in ev:
            for item in ev["workspaceStatus"].get("item", []):
                if item.get("key") == "BUILD_SCM_REVISION":
                    revision = item.get("value")
        elif "action" in ev and not ev["action"].get("success", True):
            a = ev["action"]
            label = a.get("label") or eid.get("actionCompleted", {}).get("label", "")
            stderr = a.get("stderr", {})
            text = stderr.get("contents") or _read_uri(stderr.get("uri", ""))
            detail = (a.get("failureDetail") or {}).get("message", "")
            out.append({"binary": f"bazel {label}", "kind": "build",
                        "type": f"BazelActionFailed.{a.get('type', 'action')}",
                        "message": "\n".join(x for x in (detail, text) if x) or f"exit code {a.get('exitCode')}",
                        "context": {"target": label, "mnemonic": a.get("type"), "exit_code": a.get("exitCode"),
                                    "command_line": a.get("commandLine", [])[:20]}})
        elif "completed" in ev and not ev["completed"].get("success", True):
            label = eid.get("targetCompleted", {}).get("label", "")
            detail = (ev["completed"].get("failureDetail") or {}).get("message", "")
            if not any(o["context"].get("target") == label for o in out):  # the action already said it
                out.append({"binary": f"bazel {label}", "kind": "build", "type": "BazelTargetFailed",
                            "message": detail or "target failed", "context": {"target": label}})
        elif "aborted" in ev:
            ab = ev["aborted"]
            label = next((v.get("label") for v in eid.values() if isinstance(v, dict) and v.get("label")), "")
            out.append({"binary": f"bazel {label}".strip(), "kind": "build",
                        "type": f"BazelAborted.{ab.get('reason', 'UNKNOWN')}",
                        "message": ab.get("description", ""), "context": {"target": label}})
        elif "testResult" in ev and ev["testResult"].get("status") not in (None, "PASSED", "FLAKY"):
            tr = ev["testResult"]
            label = eid.get("testResult", {}).get("label", "")
            logs = [o for o in tr.get("testActionOutput", []) if o.get("name") == "test.log"]
            text = _read_uri(logs[0].get("uri", "")) if logs else ""
            out.append({"binary": f"bazel {label}", "kind": "test", "type": f"BazelTest.{tr['status']}",
                        "message": text or f"test {tr['status']}",
                        "context": {"target": label, "status": tr["status"],
                                    "attempt": eid.get("testResult", {}).get("attempt"),
                                    "duration_ms": tr.get("testAttemptDurationMillis")}})
    for o in out:
        o["context"].update({"bazel_command": started.get("command"), "invocation": started.get("uuid"),
                             "bazel_version": started.get("buildToolVersion"), "git": revision})
    return out
