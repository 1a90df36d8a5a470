"""The triage database: SQLite (WAL) by default, PostgreSQL by URL; versioned migrations; JSONL dump.

    store = open_store(None)                          # ~/.cache/lab/triage.db (or $LAB_TRIAGE_DB)
    store = open_store("/tmp/t.db")                   # a SQLite file
    store = open_store("postgresql://u@/db?host=/s")  # PostgreSQL through psycopg

Tables (every row has a content `uid`, so an import of a dump is idempotent):
  failures  one failure-log record each: signature, normalized text, status open/known/resolved
  fixes     a fix for a signature: text, origin ("user", "kb:<id>", "llm:<model>"), provenance JSON
  outcomes  feedback on a fix: worked 1/0, note
  reports   divergence reports and advice (JSON), from //triage:divergence and //triage:advise
  schema_version  one row per applied migration
Every statement is parameterized (no value is ever formatted into SQL). SQLite runs in WAL
mode with synchronous=NORMAL: a committed transaction survives a killed process (kill -9);
only a power loss may drop the last one.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TextIO

from triage import signature as sig

ENV_VAR = "LAB_TRIAGE_DB"
DEFAULT_DB = "~/.cache/lab/triage.db"

# Each migration: (version, [statements]); "{pk}" is the dialect's auto-increment key.
MIGRATIONS: list[tuple[int, list[str]]] = [
    (1, [
        """CREATE TABLE failures (id {pk}, uid TEXT NOT NULL UNIQUE, time TEXT, source TEXT,
             binary_name TEXT, kind TEXT, signature TEXT NOT NULL, normalized TEXT NOT NULL,
             record TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'open')""",
        """CREATE TABLE fixes (id {pk}, uid TEXT NOT NULL UNIQUE, signature TEXT NOT NULL,
             normalized TEXT NOT NULL, failure_uid TEXT, text TEXT NOT NULL, origin TEXT NOT NULL,
             provenance TEXT, created TEXT)""",
        """CREATE TABLE outcomes (id {pk}, uid TEXT NOT NULL UNIQUE, fix_uid TEXT NOT NULL,
             failure_uid TEXT, worked INTEGER NOT NULL, note TEXT, created TEXT)""",
    ]),
    (2, [
        "CREATE INDEX failures_signature ON failures (signature)",
        "CREATE INDEX fixes_signature ON fixes (signature)",
        "CREATE INDEX outcomes_fix ON outcomes (fix_uid)",
        """CREATE TABLE reports (id {pk}, uid TEXT NOT NULL UNIQUE, kind TEXT NOT NULL,
             body TEXT NOT NULL, outcome TEXT, created TEXT)""",
    ]),
]


class StoreError(Exception):
    """A database that cannot be opened or read (bad URL, missing driver, unreachable server)."""


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def uid_of(*parts: Any) -> str:
    """A stable content id: sha1 of the parts as canonical JSON."""
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()


def default_url() -> str:
    """$LAB_TRIAGE_DB, else ~/.cache/lab/triage.db."""
    return os.environ.get(ENV_VAR) or DEFAULT_DB


class Store:
    """Common logic; subclasses give connections, the placeholder and the key type."""

    pk = "INTEGER PRIMARY KEY AUTOINCREMENT"
    url = ""

    def __init__(self):
        self._local = threading.local()
        self._lock = threading.Lock()

    # -- dialect hooks ---------------------------------------------------------------
    def _connect(self):
        raise NotImplementedError

    def _sql(self, sql: str) -> str:
        return sql

    # -- plumbing --------------------------------------------------------------------
    def conn(self):
        """This thread's connection (one per thread: sqlite3 and psycopg connections are not shared)."""
        c = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = self._connect()
        return c

    def execute(self, sql: str, params: Iterable[Any] = ()) -> list[tuple]:
        """Run one parameterized statement in its own transaction; rows if it returns any."""
        c = self.conn()
        cur = c.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            rows = cur.fetchall() if cur.description else []
            c.commit()
            return rows
        except Exception:
            c.rollback()
            raise
        finally:
            cur.close()

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[dict]:
        """Rows of a SELECT as dicts."""
        c = self.conn()
        cur = c.cursor()
        try:
            cur.execute(self._sql(sql), tuple(params))
            names = [d[0] for d in cur.description]
            rows = [dict(zip(names, r)) for r in cur.fetchall()]
            c.commit()
            return rows
        finally:
            cur.close()

    def version(self) -> int:
        """The highest applied migration (0 on an empty database)."""
        try:
            rows = self.query("SELECT MAX(version) AS v FROM schema_version")
        except Exception:
            self.conn().rollback()
            return 0
        return int(rows[0]["v"] or 0)

    def migrate(self) -> int:
        """Apply the migrations above the current version, each in one transaction; returns the version."""
        with self._lock:
            self.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied TEXT)")
            current = self.version()
            for version, statements in MIGRATIONS:
                if version <= current:
                    continue
                c = self.conn()
                cur = c.cursor()
                try:
                    for stmt in statements:
                        cur.execute(stmt.format(pk=self.pk))
                    cur.execute(self._sql("INSERT INTO schema_version (version, applied) VALUES (?, ?)"),
                                (version, _now()))
                    c.commit()
                except Exception:
                    c.rollback()
                    raise
                finally:
                    cur.close()
                current = version
            return current

    def _insert(self, table: str, row: Mapping[str, Any]) -> tuple[int, bool]:
        """Insert unless a row with the same uid exists; (id, inserted)."""
        cols = list(row)
        sql = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)}) "
               f"ON CONFLICT (uid) DO NOTHING RETURNING id")
        rows = self.execute(sql, [row[c] for c in cols])
        if rows:
            return int(rows[0][0]), True
        got = self.query(f"SELECT id FROM {table} WHERE uid = ?", (row["uid"],))
        return int(got[0]["id"]), False

    # -- failures --------------------------------------------------------------------
    def add_failure(self, record: Mapping[str, Any], source: str = "log") -> dict:
        """Store one failure-log record (idempotent by content); returns its row."""
        fid, _ = self.insert_failure(record, source)
        return self.failure(fid)

    def insert_failure(self, record: Mapping[str, Any], source: str = "log", status: str = "open",
                       described: Optional[tuple[str, str]] = None) -> tuple[int, bool]:
        """Insert one record unless stored already (uid of its content): (id, inserted), no read back.

        described: (signature, normalized) when the caller has them (signature.describe).
        """
        signature, normalized = described or sig.describe(record)
        text = json.dumps(record, sort_keys=True, default=str)
        row = {"uid": uid_of(record), "time": str(record.get("time") or _now()), "source": source,
               "binary_name": str(record.get("binary") or ""), "kind": str(record.get("kind") or ""),
               "signature": signature, "normalized": normalized, "record": text, "status": status}
        return self._insert("failures", row)

    def failure(self, fid: int) -> Optional[dict]:
        """One failure row by id (record decoded), or None."""
        rows = self.query("SELECT * FROM failures WHERE id = ?", (int(fid),))
        if not rows:
            return None
        row = rows[0]
        row["record"] = json.loads(row["record"])
        return row

    def set_status(self, fid: int, status: str) -> None:
        """Mark a failure open / known / resolved."""
        self.execute("UPDATE failures SET status = ? WHERE id = ?", (status, int(fid)))

    def count_failures(self, status: Optional[str] = None) -> int:
        """How many failures (with `status`, if given)."""
        if status is None:
            rows = self.query("SELECT COUNT(*) AS n FROM failures")
        else:
            rows = self.query("SELECT COUNT(*) AS n FROM failures WHERE status = ?", (status,))
        return int(rows[0]["n"])

    # -- fixes and outcomes ----------------------------------------------------------
    def add_fix(self, signature: str, normalized: str, text: str, origin: str = "user",
                provenance: Optional[Mapping[str, Any]] = None, failure_uid: Optional[str] = None) -> dict:
        """Record a fix for a signature (idempotent on signature+text+origin); returns its row."""
        row = {"uid": uid_of("fix", signature, text, origin), "signature": signature, "normalized": normalized,
               "failure_uid": failure_uid, "text": text, "origin": origin,
               "provenance": json.dumps(dict(provenance or {}), sort_keys=True), "created": _now()}
        fid, _ = self._insert("fixes", row)
        return self.fix(fid)

    def fix(self, fix_id: int) -> Optional[dict]:
        """One fix with its worked/tried counts, or None."""
        rows = self._fixes("WHERE f.id = ?", (int(fix_id),))
        return rows[0] if rows else None

    def _fixes(self, where: str, params: Iterable[Any]) -> list[dict]:
        rows = self.query(
            "SELECT f.id, f.uid, f.signature, f.normalized, f.failure_uid, f.text, f.origin, f.provenance, "
            "f.created, COALESCE(SUM(o.worked), 0) AS worked, COUNT(o.id) AS tried "
            f"FROM fixes f LEFT JOIN outcomes o ON o.fix_uid = f.uid {where} "
            "GROUP BY f.id, f.uid, f.signature, f.normalized, f.failure_uid, f.text, f.origin, f.provenance, "
            "f.created ORDER BY f.id", params)
        for r in rows:
            r["provenance"] = json.loads(r["provenance"] or "{}")
            r["worked"], r["tried"] = int(r["worked"]), int(r["tried"])
        return rows

    def fixes_for(self, signatures: Iterable[str]) -> list[dict]:
        """Every fix recorded for any of `signatures`, with worked/tried counts."""
        sigs = list(dict.fromkeys(signatures))
        if not sigs:
            return []
        return self._fixes(f"WHERE f.signature IN ({', '.join('?' for _ in sigs)})", sigs)

    def fixes_version(self) -> tuple[int, int, int, int]:
        """(count, max id) of fixes and of outcomes: changes whenever a fix or an outcome is added
        (cheap; the key of the engine's in-memory fixes)."""
        row = self.query("SELECT (SELECT COUNT(*) FROM fixes) AS n, (SELECT MAX(id) FROM fixes) AS m, "
                         "(SELECT COUNT(*) FROM outcomes) AS on_, (SELECT MAX(id) FROM outcomes) AS om")[0]
        return int(row["n"]), int(row["m"] or 0), int(row["on_"]), int(row["om"] or 0)

    def all_fixes(self) -> list[dict]:
        """Every fix with its worked/tried counts."""
        return self._fixes("", ())

    def fixed_signatures(self) -> list[tuple[str, str]]:
        """(signature, normalized text) of every signature that has a user or accepted fix."""
        rows = self.query("SELECT DISTINCT signature, normalized FROM fixes ORDER BY signature")
        return [(r["signature"], r["normalized"]) for r in rows]

    def add_outcome(self, fix_id: int, worked: bool, note: str = "", failure_id: Optional[int] = None) -> dict:
        """Feedback on a fix: worked or not (each call one outcome; note is free text)."""
        fix = self.fix(fix_id)
        if fix is None:
            raise KeyError(f"no fix with id {fix_id}")
        failure_uid = None
        if failure_id is not None:
            f = self.failure(failure_id)
            if f is None:
                raise KeyError(f"no failure with id {failure_id}")
            failure_uid = f["uid"]
        created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")
        row = {"uid": uid_of("outcome", fix["uid"], failure_uid, bool(worked), note, created),
               "fix_uid": fix["uid"], "failure_uid": failure_uid, "worked": 1 if worked else 0,
               "note": note, "created": created}
        oid, _ = self._insert("outcomes", row)
        return {"id": oid, **row}

    # -- reports ---------------------------------------------------------------------
    def add_report(self, kind: str, body: Mapping[str, Any]) -> int:
        """Store a divergence report or advice (JSON); returns its id."""
        created = _now()
        text = json.dumps(body, sort_keys=True, default=str)
        rid, _ = self._insert("reports", {"uid": uid_of("report", kind, text, created), "kind": kind,
                                          "body": text, "outcome": None, "created": created})
        return rid

    def set_report_outcome(self, report_id: int, outcome: str) -> bool:
        """Record what happened after a report's advice; False if there is no such report."""
        rows = self.execute("UPDATE reports SET outcome = ? WHERE id = ? RETURNING id", (outcome, int(report_id)))
        return bool(rows)

    def reports_with_outcome(self, kind: str, prefix: str) -> list[dict]:
        """Reports of `kind` whose outcome starts with `prefix` ("worked"), newest first, body decoded."""
        rows = self.query("SELECT id, kind, body, outcome, created FROM reports WHERE kind = ? AND outcome LIKE ? "
                          "ORDER BY id DESC", (kind, prefix + "%"))
        for r in rows:
            r["body"] = json.loads(r["body"])
        return rows

    # -- dump ------------------------------------------------------------------------
    def export_jsonl(self, out: TextIO) -> int:
        """Write every failure, fix, outcome and report as JSON lines ({"table": ..., ...}); returns the count."""
        n = 0
        for table in ("failures", "fixes", "outcomes", "reports"):
            for row in self.query(f"SELECT * FROM {table} ORDER BY id"):
                row.pop("id")
                out.write(json.dumps({"table": table, **row}, sort_keys=True) + "\n")
                n += 1
        return n

    def import_jsonl(self, lines: Iterable[str], where: str = "input") -> tuple[int, int]:
        """Load an export (rows already present, by uid, are skipped); returns (inserted, skipped)."""
        columns = {"failures": ["uid", "time", "source", "binary_name", "kind", "signature", "normalized",
                                "record", "status"],
                   "fixes": ["uid", "signature", "normalized", "failure_uid", "text", "origin", "provenance",
                             "created"],
                   "outcomes": ["uid", "fix_uid", "failure_uid", "worked", "note", "created"],
                   "reports": ["uid", "kind", "body", "outcome", "created"]}
        inserted = skipped = 0
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                cols = columns[obj["table"]]
                row = {c: obj.get(c) for c in cols}
                if not row["uid"]:
                    raise KeyError("uid")
            except (ValueError, KeyError, TypeError) as e:
                raise StoreError(f"{where}:{lineno}: not a triage export line ({type(e).__name__}: {e})") from None
            _, new = self._insert(obj["table"], row)
            inserted += new
            skipped += not new
        return inserted, skipped


class SqliteStore(Store):
    """SQLite file in WAL mode (one connection per thread)."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.url = str(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"--db {self.path}: cannot create its folder ({e.strerror})") from None

    def _connect(self):
        try:
            c = sqlite3.connect(str(self.path), timeout=30.0, check_same_thread=False)
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("PRAGMA synchronous=NORMAL")
            c.execute("PRAGMA busy_timeout=30000")
        except sqlite3.Error as e:
            raise StoreError(f"--db {self.path}: not a usable SQLite database ({e})") from None
        return c


class PostgresStore(Store):
    """PostgreSQL through psycopg 3 (one connection per thread)."""

    pk = "BIGSERIAL PRIMARY KEY"

    def __init__(self, url: str):
        super().__init__()
        self.url = url
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError("--db postgresql://...: the psycopg package is not installed") from None

    def _connect(self):
        import psycopg

        try:
            return psycopg.connect(self.url, connect_timeout=10)
        except psycopg.Error as e:
            raise StoreError(f"--db {self.url}: cannot connect ({str(e).strip().splitlines()[0]})") from None

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")  # our SQL has no literal '?'; values always travel as parameters


def open_store(url: Optional[str] = None, migrate: bool = True) -> Store:
    """The store at `url` (a SQLite path, sqlite:///path, or postgresql://...), migrated to the latest schema."""
    url = url or default_url()
    if url.startswith(("postgresql://", "postgres://")):
        store: Store = PostgresStore(url)
    else:
        path = url[len("sqlite:///") - 1:] if url.startswith("sqlite:///") else url
        store = SqliteStore(Path(os.path.expandvars(os.path.expanduser(path))))
    if migrate:
        try:
            store.migrate()
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - one clear line naming the database
            raise StoreError(f"--db {url}: cannot prepare the schema ({type(e).__name__}: {e})") from None
    return store
