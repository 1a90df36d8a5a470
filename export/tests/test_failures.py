"""export/failures.py: one well-formed record per failed run, the op/node parser, $LAB_FAILURES_LOG."""

import json

import pytest
from absl import flags
from absl.testing import flagsaver

from export import common, failures

FIELDS = {"schema", "time", "binary", "kind", "argv", "flags", "exported", "versions", "git", "exception",
          "failing_op", "failing_node"}


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("text, op", [
    ("Unsupported operator aten.foo in the graph", "aten.foo"),
    ("Exporting the operator 'aten::foo' to ONNX opset version 18 is not supported", "aten.foo"),
    ("Conversion of function torch._ops.aten.index_copy.default not currently supported!",
     "aten.index_copy.default"),
    ("While executing %index_copy_3 : [num_users=1] = call_function[target=torch.ops.aten.index_copy.default]",
     "aten.index_copy.default"),
    ("torch.export failed. Please see the error above.", None),
])
def test_failing_op(text, op):
    assert failures.failing_op(text) == op


def test_failing_node():
    assert failures.failing_node("While executing %index_copy_3 : [num_users=1] = ...") == "index_copy_3"
    assert failures.failing_node("Error when translating node %linear_2 : ...") == "linear_2"
    assert failures.failing_node("no node here") is None


def test_log_path_honours_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_FAILURES_LOG", str(tmp_path / "x" / "f.jsonl"))
    assert failures.log_path() == tmp_path / "x" / "f.jsonl"
    monkeypatch.delenv("LAB_FAILURES_LOG")
    assert str(failures.log_path()).endswith(".cache/lab/failures.jsonl")


def test_forced_failure_inside_export_writes_one_record(tmp_path, monkeypatch, capsys):
    # The real export.onnx_export main, with the exporter forced to fail the way torch.onnx does.
    from export import onnx_export as onnx_binary
    from export import onnx_step

    log = tmp_path / "logs" / "failures.jsonl"
    monkeypatch.setenv("LAB_FAILURES_LOG", str(log))

    def broken_export(model, path, max_len):
        try:
            raise NotImplementedError("no decomposition for aten.foo.default")
        except NotImplementedError as e:
            raise RuntimeError("Failed to convert the exported program to an ONNX model. "
                               "Error when translating node %foo_1") from e

    monkeypatch.setattr(onnx_step, "export_onnx", broken_export)
    with flagsaver.flagsaver():
        flags.FLAGS(["onnx", "--output", str(tmp_path / "out"), "--max_new_tokens", "2", "--max_seq_len", "16"])
        try:
            with pytest.raises(RuntimeError, match="Failed to convert"):
                onnx_binary.main([])
        finally:
            flags.FLAGS.unparse_flags()
    assert f"failure recorded in {log}" in capsys.readouterr().out
    (rec,) = _records(log)
    assert FIELDS <= set(rec) and rec["schema"] == 1 and rec["binary"] == "export.onnx_export"
    assert rec["kind"] == "error" and rec["time"].endswith("+00:00")
    assert rec["flags"]["max_seq_len"] == 16 and rec["flags"]["output"] == str(tmp_path / "out")
    inputs = rec["exported"].pop("inputs")
    assert rec["exported"] == {"checkpoint": "embedded", "dtype": "float32", "quant": "none+int8",
                               "max_seq_len": 16}
    assert inputs["input_ids"] == {"shape": [1, 6], "dtype": "int64"}, "the default prompt: 6 ids"
    assert inputs["k_cache"]["shape"][3] == 16 and inputs["k_cache"]["dtype"] == "float32"
    assert rec["versions"]["python"] and rec["versions"]["torch"] and "tensorrt_llm" in rec["versions"]
    assert rec["exception"]["type"] == "RuntimeError" and "ONNX" in rec["exception"]["message"]
    assert rec["exception"]["chain"][0]["type"] == "NotImplementedError"
    assert any("broken_export" in frame for frame in rec["exception"]["traceback"])
    assert rec["failing_op"] == "aten.foo.default" and rec["failing_node"] == "foo_1"
    assert rec["git"]


def test_usage_error_is_kind_usage_and_reraised(tmp_path, monkeypatch):
    log = tmp_path / "f.jsonl"
    monkeypatch.setenv("LAB_FAILURES_LOG", str(log))

    @failures.capture("export.fake", dtype="float32")
    def main(argv):
        raise common.ExportError("bad --thing")

    for _ in range(2):  # appends: one line per failed run
        with pytest.raises(common.ExportError):
            main([])
    recs = _records(log)
    assert len(recs) == 2 and all(r["kind"] == "usage" and r["binary"] == "export.fake" for r in recs)
    assert recs[0]["exception"]["type"] == "export.common.ExportError"


def test_success_writes_nothing_and_unwritable_log_does_not_mask(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LAB_FAILURES_LOG", str(tmp_path / "f.jsonl"))
    assert failures.capture("export.fake")(lambda argv: 0)([]) == 0
    assert not (tmp_path / "f.jsonl").exists()
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("LAB_FAILURES_LOG", str(tmp_path / "file" / "f.jsonl"))  # parent is a file
    with pytest.raises(ZeroDivisionError):
        with failures.capturing("export.fake"):
            1 / 0
    assert "failure not recorded" in capsys.readouterr().out
