"""`tools/bazel run //triage:triage -- COMMAND`: the failure log in a database, suggestions, feedback.

  ingest   [--log FILE] [--bep FILE]     read the failure log (default $LAB_FAILURES_LOG or
                                         ~/.cache/lab/failures.jsonl) and/or a Bazel BEP file
  suggest  --failure ID | --text "..."   what is known: fixes, knowledge base, (LLM), or open
  feedback --fix ID --worked | --did_not_work [--failure ID] [--note "..."]
  feedback --failure ID --my_fix "..."   "my fix was ..." (recorded as a fix that worked)
  feedback --failure ID --kb ENTRY_ID    a knowledge-base entry's fix worked for this failure
  list     [--status open|known|resolved]
  export   --out FILE.jsonl / import --in FILE.jsonl
Global: --db (SQLite path or postgresql://..., default $LAB_TRIAGE_DB or ~/.cache/lab/triage.db),
--llm_url/--llm_key (an OpenAI-compatible endpoint; nothing is sent unless both are given).
Exit 2 with one `error: ...` line on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional

from triage import bep, llm
from triage.engine import Triage
from triage.store import StoreError, open_store


class UsageError(Exception):
    """Bad flags or input files: one line, exit 2."""


def user_path(path: str) -> Path:
    """A path as typed, against the folder the user ran the command in (model.loader.user_path's rule)."""
    path = os.path.expanduser(path)
    return Path(path if os.path.isabs(path) else os.path.join(os.environ.get("BUILD_WORKING_DIRECTORY") or os.getcwd(), path))


def db_url(raw: Optional[str]) -> Optional[str]:
    """--db as given, a relative SQLite path resolved against the user's folder."""
    if not raw or raw.startswith(("postgresql://", "postgres://", "sqlite:///")):
        return raw
    return str(user_path(raw))


def parser() -> argparse.ArgumentParser:
    """The CLI's flags."""
    p = argparse.ArgumentParser(prog="triage", description=__doc__.split("\n")[0])
    p.add_argument("--db", help="SQLite path or postgresql:// URL (default $LAB_TRIAGE_DB or ~/.cache/lab/triage.db)")
    p.add_argument("--llm_url", help="OpenAI-compatible base URL (.../v1); with --llm_key only")
    p.add_argument("--llm_key", help="its bearer key")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("ingest")
    s.add_argument("--log", help="failure log JSONL (default $LAB_FAILURES_LOG or ~/.cache/lab/failures.jsonl)")
    s.add_argument("--bep", help="Bazel --build_event_json_file output")
    s = sub.add_parser("suggest")
    s.add_argument("--failure", type=int, help="failure id")
    s.add_argument("--text", help="an error text ('Type: message')")
    s = sub.add_parser("feedback")
    s.add_argument("--fix", type=int)
    s.add_argument("--failure", type=int)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--worked", action="store_true")
    g.add_argument("--did_not_work", action="store_true")
    s.add_argument("--my_fix", help="what fixed it, in your words")
    s.add_argument("--kb", help="a knowledge-base entry id whose fix worked (or, with --did_not_work, did not)")
    s.add_argument("--note", default="")
    s = sub.add_parser("list")
    s.add_argument("--status", choices=["open", "known", "resolved"])
    s = sub.add_parser("export")
    s.add_argument("--out", required=True)
    s = sub.add_parser("import")
    s.add_argument("--in", dest="inp", required=True)
    return p


def record_from_text(text: str) -> dict:
    """A minimal record from "Type: message" text (the first line's "Type:" prefix, if any)."""
    first, _, rest = text.partition(":")
    if first and " " not in first.strip() and rest:
        return {"exception": {"type": first.strip(), "message": rest.strip(), "traceback": []}}
    return {"exception": {"type": "Error", "message": text, "traceback": []}}


def show(result: dict, as_json: bool) -> None:
    """Print a suggestion result."""
    if as_json:
        print(json.dumps(result, indent=1, default=str))
        return
    fid = result.get("failure_id")
    print(f"failure {fid if fid is not None else '-'}  signature {result['signature']}  status {result['status']}")
    for f in result["fixes"]:
        print(f"  fix {f['fix_id']} [{f['match']} {f['similarity']:.2f}, worked {f['worked']}/{f['tried']}, "
              f"score {f['score']:.3f}, {f['origin']}]: {f['text']}")
    for e in result["kb"]:
        print(f"  kb {e['id']} [{e['match']} {e['score']:.2f}]: {e['title']}\n     cause: {e['cause'].strip()}"
              f"\n     fix: {e['fix'].strip()}\n     source: {e['source']}")
    if result.get("llm"):
        print(f"  llm: {result['llm'].get('text') or result['llm'].get('error')}")


def read_log(path: Path) -> list[dict]:
    """The records of a failure log (bad lines name the file and line)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UsageError(f"--log {path}: cannot read ({e.strerror})") from None
    out = []
    for i, line in enumerate(lines, 1):
        if line.strip():
            try:
                rec = json.loads(line)
            except ValueError as e:
                raise UsageError(f"--log {path}:{i}: not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise UsageError(f"--log {path}:{i}: not a failure record")
            out.append(rec)
    return out


def ingest_bep(tri: Triage, path: Path, as_json: bool) -> int:
    """Append each failed action/target/test of a BEP file to the failure log, then ingest it."""
    from export.failures import append_record, make_event

    try:
        found = bep.failures(path)
    except bep.BEPError as e:
        raise UsageError(str(e)) from None
    for f in found:
        record = make_event(f["binary"], f["kind"], f["type"], f["message"], context=f["context"],
                            argv=["bazel", str(f["context"].get("bazel_command") or "")])
        append_record(record)
        show(tri.ingest(record, source="bep"), as_json)
    print(f"{len(found)} failures from {path}")
    return len(found)


def run(args: argparse.Namespace) -> int:
    """Execute one command; returns the exit status."""
    endpoint = llm.from_env(args.llm_url, args.llm_key)
    if bool(args.llm_url) != bool(args.llm_key) and endpoint is None:
        raise UsageError("--llm_url and --llm_key go together (nothing is sent without both)")
    tri = Triage(open_store(db_url(args.db)), endpoint=endpoint)
    if args.command == "ingest":
        if args.bep:
            ingest_bep(tri, user_path(args.bep), args.json)
        if args.log or not args.bep:
            from export.failures import log_path

            path = user_path(args.log) if args.log else log_path()
            if not path.exists():
                raise UsageError(f"--log {path}: no such file (nothing has failed yet, or set $LAB_FAILURES_LOG)")
            records = read_log(path)
            for rec in records:
                show(tri.ingest(rec, source="log", ask_llm=False), args.json)
            print(f"{len(records)} records from {path}")
    elif args.command == "suggest":
        if (args.failure is None) == (args.text is None):
            raise UsageError("suggest needs exactly one of --failure ID or --text TEXT")
        if args.failure is not None:
            row = tri.store.failure(args.failure)
            if row is None:
                raise UsageError(f"--failure {args.failure}: no such failure")
            show(tri.suggest(row["record"], failure_id=row["id"]), args.json)
        else:
            show(tri.suggest(record_from_text(args.text)), args.json)
    elif args.command == "feedback":
        worked = True if args.worked else (False if args.did_not_work else None)
        try:
            out = tri.feedback(failure_id=args.failure, fix_id=args.fix, worked=worked, my_fix=args.my_fix,
                               note=args.note, kb_id=args.kb)
        except (KeyError, ValueError) as e:
            raise UsageError(str(e).strip("'\"")) from None
        fix = out["fix"]
        print(f"fix {fix['id']}: worked {fix['worked']}/{fix['tried']}: {fix['text']}")
    elif args.command == "list":
        rows = tri.store.query("SELECT id, time, binary_name, status, normalized FROM failures"
                               + (" WHERE status = ?" if args.status else "") + " ORDER BY id",
                               (args.status,) if args.status else ())
        for r in rows:
            print(f"{r['id']:>5} {r['time']} {r['status']:<8} {r['binary_name']}: {r['normalized'].splitlines()[0][:100]}")
    elif args.command == "export":
        out = user_path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            n = tri.store.export_jsonl(fh)
        os.replace(tmp, out)  # atomic: a reader never sees half an export
        print(f"{n} rows written to {out}")
    elif args.command == "import":
        path = user_path(args.inp)
        try:
            with open(path, encoding="utf-8") as fh:
                new, old = tri.store.import_jsonl(fh, where=str(path))
        except OSError as e:
            raise UsageError(f"--in {path}: cannot read ({e.strerror})") from None
        print(f"{new} rows imported, {old} already present, from {path}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Parse, run, and turn bad input into one `error:` line (exit 2)."""
    args = parser().parse_args(argv)
    try:
        return run(args)
    except (UsageError, StoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
