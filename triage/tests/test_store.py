"""triage/store.py: migrations, idempotent inserts, outcomes, JSONL round trip, on SQLite and a real PostgreSQL."""

import io
import json
import sqlite3

import pytest

from triage.store import MIGRATIONS, StoreError, open_store
from triage.tests import pg


def _record(msg="mat1 and mat2 shapes cannot be multiplied (4x64 and 32x64)", path="/a/llama.py"):
    return {"schema": 1, "binary": "export.aoti", "kind": "error",
            "exception": {"type": "RuntimeError", "message": msg, "traceback": [f"{path}:12 in forward: x"]}}


def _exercise(store):
    assert store.version() == MIGRATIONS[-1][0]
    a = store.add_failure(_record())
    again = store.add_failure(_record())
    assert again["id"] == a["id"], "the same record twice is one row"
    b = store.add_failure(_record(path="/b/llama.py"))
    assert b["id"] != a["id"] and b["signature"] == a["signature"], "same failure elsewhere: one signature"
    fix = store.add_fix(a["signature"], a["normalized"], "transpose the weight", failure_uid=a["uid"])
    store.add_outcome(fix["id"], True, failure_id=a["id"])
    store.add_outcome(fix["id"], False, note="not here")
    got = store.fix(fix["id"])
    assert (got["worked"], got["tried"]) == (1, 2)
    assert store.fixes_for([a["signature"]])[0]["id"] == fix["id"]
    assert store.fixes_version() == (1, fix["id"], 2, store.fixes_version()[3]), "fixes and outcomes counted"
    assert [(f["id"], f["worked"], f["tried"]) for f in store.all_fixes()] == [(fix["id"], 1, 2)]
    fid, inserted = store.insert_failure(_record(), status="known")
    assert (fid, inserted) == (a["id"], False), "insert_failure is idempotent by content too"
    # A value with SQL in it is data, never SQL.
    evil = store.add_failure(_record(msg="x'); DROP TABLE failures; --"))
    assert store.failure(evil["id"])["record"]["exception"]["message"].startswith("x');")
    assert store.count_failures() == 3
    store.add_report("divergence", {"first": "layers.0.mlp"})
    buf = io.StringIO()
    n = store.export_jsonl(buf)
    assert n == 3 + 1 + 2 + 1
    return buf.getvalue()


def test_sqlite_store_wal_and_roundtrip(tmp_path):
    store = open_store(str(tmp_path / "t.db"))
    dump = _exercise(store)
    mode = sqlite3.connect(str(tmp_path / "t.db")).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    other = open_store(f"sqlite:///{tmp_path}/u.db")
    assert other.import_jsonl(dump.splitlines()) == (7, 0)
    assert other.import_jsonl(dump.splitlines()) == (0, 7), "import is idempotent"
    assert other.fixes_for([json.loads(dump.splitlines()[0])["signature"]])[0]["tried"] == 2
    # Migrating again is a no-op.
    assert open_store(str(tmp_path / "t.db")).version() == MIGRATIONS[-1][0]


def test_migration_from_version_1(tmp_path):
    """A database left at version 1 gets version 2's index and table on open."""
    from triage.store import SqliteStore

    s = SqliteStore(tmp_path / "old.db")
    s.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied TEXT)")
    for stmt in MIGRATIONS[0][1]:
        s.execute(stmt.format(pk=s.pk))
    s.execute("INSERT INTO schema_version VALUES (1, 'then')")
    assert open_store(str(tmp_path / "old.db")).version() == 2
    names = {r[0] for r in sqlite3.connect(str(tmp_path / "old.db")).execute("SELECT name FROM sqlite_master")}
    assert {"reports", "failures_signature"} <= names


def test_bad_inputs(tmp_path):
    bad = tmp_path / "not.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not.db"):
        open_store(str(bad))
    store = open_store(str(tmp_path / "ok.db"))
    with pytest.raises(StoreError, match="dump.jsonl:2"):
        store.import_jsonl(['{"table": "reports", "uid": "u", "kind": "k", "body": "{}"}', "{oops"], where="dump.jsonl")


@pytest.mark.skipif(pg.bin_dir() is None, reason="PostgreSQL binaries absent (apt-get install -y postgresql)")
def test_postgresql_store_against_a_real_server(tmp_path):
    with pg.Server() as url:
        store = open_store(url)
        dump = _exercise(store)
        assert open_store(url).version() == MIGRATIONS[-1][0], "reopening does not migrate twice"
        # The same dump loads into SQLite: one format for both backends.
        assert open_store(str(tmp_path / "x.db")).import_jsonl(dump.splitlines()) == (7, 0)
    with pytest.raises(StoreError, match="cannot connect"):
        open_store(f"postgresql://lab@/postgres?host={tmp_path}/nowhere&connect_timeout=2")
