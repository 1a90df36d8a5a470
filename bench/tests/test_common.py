"""bench.common on a CPU: results folder naming, results files, timing, the correctness gate."""

import csv
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench import common

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """Point the results folder at a temporary workspace."""
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("LAB_RESULTS_DIR", raising=False)
    return tmp_path


@pytest.mark.parametrize(
    "name, slug",
    [
        ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
        ("cpu-AMD EPYC 7B13", "cpu"),
    ],
)
def test_device_slug(name, slug):
    assert common.device_slug(name) == slug


def test_results_dir_is_device_and_date(workspace):
    path = common.results_dir("kernels", device="cpu")
    assert path == workspace / "bench" / "results" / f"cpu-{datetime.date.today().isoformat()}"
    assert path.is_dir()


def test_results_dir_override(workspace, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(workspace / "out" / "run1"))
    path = common.results_dir("kernels")
    assert path == workspace / "out" / "run1" and path.is_dir()


def test_results_dir_rejects_paths(workspace):
    with pytest.raises(ValueError, match="plain file name"):
        common.results_dir("../kernels")


def test_command_line(monkeypatch):
    monkeypatch.delenv("BUILD_WORKSPACE_DIRECTORY", raising=False)
    assert common.command_line("kernels", ["--m=1,4", "--ops", "rms_norm"]) == "python3 -m bench.kernels --m=1,4 --ops rms_norm"
    monkeypatch.setenv("BUILD_WORKSPACE_DIRECTORY", "/ws")
    assert common.command_line("kernels", ["--quick"]) == "bazel run //bench:kernels -- --quick"
    assert common.command_line("kernels", []) == "bazel run //bench:kernels"


def test_versions_names_the_stack():
    v = common.versions()
    for key in ("python", "torch", "cuda", "triton", "transformers", "git"):
        assert key in v
    assert v["torch"] == torch.__version__


def test_write_results_files_and_summary_schema(workspace):
    out = common.results_dir("demo")
    rows = [{"op": "rms_norm", "M": 1, "gbps": 10.5, "dtype": torch.bfloat16}, {"op": "rms_norm", "M": 4, "extra": "x"}]
    summary = [{"name": "demo/a", "value": 1.0, "unit": "GB/s"}, {"name": "demo/b", "value": 2, "unit": "us"}]
    paths = common.write_results(out, "demo", rows, summary, command="python3 -m bench.demo")

    with paths["csv"].open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["op", "M", "gbps", "dtype", "extra"]
    assert got[0]["dtype"] == "torch.bfloat16" and got[1]["extra"] == "x"

    data = json.loads(paths["json"].read_text())
    assert data["command"] == "python3 -m bench.demo" and len(data["rows"]) == 2

    records = json.loads((out / "summary.json").read_text())
    assert [r["name"] for r in records] == ["demo/a", "demo/b"]
    for r in records:
        for key in ("name", "value", "unit", "device", "date", "command", "versions"):
            assert key in r, key
        assert r["device"] == common.device_name()
        assert r["date"] == datetime.date.today().isoformat()
        assert "torch" in r["versions"]


def test_summary_merges_by_name(workspace):
    out = common.results_dir("demo")
    common.write_results(out, "one", [], [{"name": "a", "value": 1, "unit": "x"}, {"name": "b", "value": 2, "unit": "x"}])
    common.write_results(out, "two", [], [{"name": "b", "value": 3, "unit": "x"}, {"name": "c", "value": 4, "unit": "x"}])
    records = json.loads((out / "summary.json").read_text())
    assert [(r["name"], r["value"]) for r in records] == [("a", 1), ("b", 3), ("c", 4)]


def test_summary_record_needs_name_value_unit(workspace):
    with pytest.raises(ValueError, match="unit"):
        common.write_results(common.results_dir("demo"), "demo", [], [{"name": "a", "value": 1}])


def test_percentile_matches_linear_interpolation():
    xs = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert common.percentile(xs, 50) == 3.0
    assert common.percentile(xs, 10) == pytest.approx(1.4)
    assert common.percentile(xs, 90) == pytest.approx(4.6)
    assert common.percentile([7.0], 90) == 7.0


def test_time_cpu_percentiles():
    t = common.time_cpu(lambda: time.sleep(0.002), warmup=1, iters=9)
    assert t["iters"] == 9
    assert 1500 < t["p10"] <= t["p50"] <= t["p90"] <= t["max"]
    assert t["min"] <= t["p10"]


def test_time_fn_runs_before_untimed_each_iteration():
    calls = []
    t = common.time_fn(lambda: calls.append("fn"), "cpu", warmup=2, iters=3, flush_l2=True,
                       before=lambda: calls.append("before"))
    assert calls == ["before", "fn"] * 5
    assert t["iters"] == 3


def test_measure_copy_bandwidth_cpu():
    assert common.measure_copy_bandwidth("cpu", nbytes=1 << 20) > 0


def test_check_close_accepts_rounding():
    want = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    common.check_close(want.to(torch.bfloat16), want, what="bf16 rounding")
    common.check_close(want.to(torch.float16), want, what="fp16 rounding")
    common.check_close(want.clone(), want, what="fp32")


def test_check_close_names_the_wrong_variant():
    want = torch.randn(8, 32, generator=torch.Generator().manual_seed(1))
    got = want.clone().to(torch.bfloat16)
    got[3, 7] += 1.0
    with pytest.raises(AssertionError, match=r"rms_norm triton M=8.*1 of 256 elements.*\(3, 7\)"):
        common.check_close(got, want, what="rms_norm triton M=8")


def test_check_close_rejects_nan_shape_and_tolerance():
    want = torch.ones(4, 4)
    with pytest.raises(AssertionError, match="NaN"):
        common.check_close(torch.full((4, 4), float("nan")), want, what="v")
    with pytest.raises(AssertionError, match="shape"):
        common.check_close(torch.ones(4, 5), want, what="v")
    # 0.2% off: within bf16's tolerance (1e-2), far outside fp32's (1e-5).
    common.check_close((want * 1.002).to(torch.bfloat16), want, what="v")
    with pytest.raises(AssertionError, match="rtol=1e-05"):
        common.check_close(want * 1.002, want, what="v")


def test_print_table(capsys):
    text = common.print_table([{"a": "x", "b": 1234.5}, {"a": "long", "b": None}], ["a", ("b", "B col")], title="T")
    out = capsys.readouterr().out
    assert out.strip() == text
    assert "B col" in text and "1,234" in text


def test_plot_panels_writes_png(tmp_path):
    path = common.plot_panels(
        tmp_path / "p.png",
        [{"title": "t", "series": {"a": ([1, 2, 4], [1.0, None, 3.0])}, "hlines": {"roof": 4.0}, "logx": True}],
        title="demo",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_host_copy_without_gpu_says_so_and_exits_zero():
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    # A subprocess: host_copy and kernels both define absl flags (--iters, ...).
    proc = subprocess.run([sys.executable, "-m", "bench.host_copy"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stdout
