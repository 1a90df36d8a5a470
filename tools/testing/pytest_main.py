"""Entry point of every `lab_py_test`: runs pytest on the files named in argv.

pytest's own exit code is the test's result. "No tests collected" (exit 5) is a failure: a
file whose tests cannot run here (no GPU) must still have them collected and skipped, by
per-test skip markers or `pytestmark`, never by module-level pytest.skip or conditional
definitions; a run of only skipped tests exits 0.
"""

import importlib.util
import os
import sys

import pytest

if __name__ == "__main__":
    args = ["-q", "-p", "no:cacheprovider", "--rootdir", os.getcwd()]
    if importlib.util.find_spec("triage") and importlib.util.find_spec("triage.pytest_plugin"):
        args += ["-p", "triage.pytest_plugin"]  # failed parity comparisons -> the failure log
    xml = os.environ.get("XML_OUTPUT_FILE")
    if xml:
        args += ["--junitxml", xml]
    sys.exit(int(pytest.main(args + sys.argv[1:])))
