"""`tools/bazel run //triage:ingest -- --bep FILE [--log FILE] [--db URL]`: `triage ingest` as its own binary."""

import argparse
import sys

from triage.cli import main


def to_cli_argv(argv: list[str]) -> list[str]:
    """This binary's flags as the argv of `triage ... ingest ...`."""
    p = argparse.ArgumentParser(prog="ingest", description=__doc__)
    p.add_argument("--db")
    p.add_argument("--json", action="store_true")
    p.add_argument("--bep")
    p.add_argument("--log")
    a = p.parse_args(argv)
    out = (["--db", a.db] if a.db else []) + (["--json"] if a.json else []) + ["ingest"]
    return out + (["--bep", a.bep] if a.bep else []) + (["--log", a.log] if a.log else [])


if __name__ == "__main__":
    sys.exit(main(to_cli_argv(sys.argv[1:])))
