"""notebooks/results.ipynb: executes headless on the committed results, loads every run, renders HTML."""

import json
import pathlib

import pytest

from notebooks import render
from notebooks import results_lib as L

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


def _record(name, value, unit, device, date, **extra):
    return {"name": name, "value": value, "unit": unit, "device": device, "date": date,
            "command": "python3 -m bench.x", "versions": {}, **extra}


def _write_runs(tmp_path):
    """Two synthetic runs with one record of each comparison, values chosen so every check below can fail."""
    runs = {
        "gpu-a-2026-01-01": ("GPU A", "2026-01-01", 100.0),
        "gpu-b-2026-02-01": ("GPU B", "2026-02-01", 200.0),
    }
    for folder, (device, date, scale) in runs.items():
        recs = [
            _record("kernels/rms_norm/bf16/M1x4096/cuda", scale, "GB/s", device, date, pct_of_copy=scale / 1000),
            _record("flash_attention/ours/causal/S=1024 TFLOP/s", scale, "TFLOP/s", device, date),
            _record("flash_attention/sdpa_cudnn/causal/S=1024 TFLOP/s", 2 * scale, "TFLOP/s", device, date),
            _record("decode/tiny/graph/bs1/tok_s", scale, "tok/s", device, date),
            _record("decode/tiny/best_ours/bs1/pct_roofline", 50.0, "%", device, date, variant="graph"),
            _record("serving/continuous output tok/s", scale, "tok/s", device, date),
            _record("serving/continuous ttft p50 ms", 1000 / scale, "ms", device, date),
            _record("compile/onnxruntime status", "skipped", "", device, date),  # a string value is skipped
        ]
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "summary.json").write_text(json.dumps(recs))
    (tmp_path / "not-a-run.txt").write_text("ignored")
    return tmp_path


def test_loads_every_run_and_compares(tmp_path):
    records = L.load_summaries(_write_runs(tmp_path))
    assert L.runs(records) == ["gpu-a-2026-01-01", "gpu-b-2026-02-01"]
    assert len(records) == 16
    _, kernels = L.kernels_pct_of_copy(records)
    assert sorted(r["pct_of_copy"] for r in kernels) == [10.0, 20.0]
    _, attention = L.attention_vs_cudnn(records)
    ours = [r for r in attention if r["variant"] == "ours"]
    assert [r["x cuDNN"] for r in ours] == [0.5, 0.5]
    _, decode = L.decode_vs_roofline(records)
    roof = sorted(r["tok/s"] for r in decode if r["variant"] == "roofline (derived)")
    assert roof == [200.0, 400.0]  # graph tok/s / 50 %
    _, serving = L.serving(records)
    assert {(r["run"], r["metric"]) for r in serving} == {
        (run, m) for run in L.runs(records) for m in ("output tok/s", "ttft p50")}
    fig, quant = L.quant_quality_vs_bytes(records)
    assert quant == []  # no quant records: the section says so


def test_bad_summary_names_the_file(tmp_path):
    _write_runs(tmp_path)
    bad = tmp_path / "gpu-c-2026-03-01"
    bad.mkdir()
    (bad / "summary.json").write_text(json.dumps([{"name": "x", "value": 1}]))
    with pytest.raises(ValueError, match="gpu-c-2026-03-01/summary.json: record 0 lacks"):
        L.load_summaries(tmp_path)
    (bad / "summary.json").write_text("{not json")
    with pytest.raises(ValueError, match="gpu-c-2026-03-01/summary.json: not JSON"):
        L.load_summaries(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*/summary.json"):
        L.load_summaries(tmp_path / "gpu-c-2026-03-01")


def test_notebook_is_committed_without_outputs():
    nb = json.loads((ROOT / "notebooks" / "results.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert code and all(not c["outputs"] and c["execution_count"] is None for c in code)


def test_notebook_executes_on_the_committed_results(tmp_path, monkeypatch):
    # The kernel's connection file, IPython's and matplotlib's caches: in the test's own tmp dir.
    for var in ("JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    summaries = sorted(RESULTS.glob("*/summary.json"))
    assert summaries, f"no summary.json under {RESULTS} (the //bench:results_summaries data dep)"
    nb = render.execute(ROOT / "notebooks" / "results.ipynb", results_dir=RESULTS, timeout=240)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    for path in summaries:  # every run folder is loaded and listed
        assert path.parent.name in text
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 5, f"expected one figure per section, got {len(figures)}"
    out = tmp_path / "results.html"
    render.write_atomic(out, render.to_html(nb))
    page = out.read_text()
    assert page.count("data:image/png;base64,") == 5 and "<h2>Kernels: % of copy bandwidth</h2>" in page
    with pytest.raises(render.RenderError, match="is a directory"):
        render.write_atomic(tmp_path, "x")
