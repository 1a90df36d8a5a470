"""//triage:advise against the committed H200 summary (its own measured roofline) and a decode trace."""

import json
from pathlib import Path

from triage import advise

H200 = Path(__file__).with_name("data") / "h200_summary.json"  # a copy of bench/results/h200-2026-11-29/summary.json
TRACE = Path(__file__).with_name("data") / "decode_trace.json"


def test_summary_classes_against_the_measured_roofline():
    result = advise.from_summary(json.loads(H200.read_text()))
    assert result["ceilings"]["copy_bandwidth_GBps"] > 4000 and result["ceilings"]["matmul_TFLOPs"] > 700
    by = {r["name"]: r for r in result["rows"]}
    big = by["kernels/rms_norm/bf16/M8192x4096/cuda"]
    assert big["class"] == "memory-bound" and big["fraction"] > 0.6
    small = by["kernels/rms_norm/bf16/M1x4096/cuda"]
    assert small["class"] == "launch-bound" and "larger size" in small["why"]
    decode = by["flash_attention/decode/ours/L=4096,B=1 GB/s"]
    assert decode["class"] == "launch-bound" and "CUDA-graph" in decode["why"]
    eager = by["kernels/rms_norm/bf16/M8192x4096/eager"]
    assert eager["class"] == "below-roof"


def test_trace_launch_bound_and_hot_ops():
    result = advise.from_trace(json.loads(TRACE.read_text()))
    assert result["overall"] == "launch-bound" and result["gpu_busy_fraction"] < 0.5
    names = {r["name"][:20]: r for r in result["rows"]}
    assert result["rows"][0]["name"].startswith("sm90_xmma_gemm")  # the most GPU time
    assert all(r["class"] == "launch-bound" for r in names.values())
    # The same kernels back to back with no host gap: not launch-bound any more.
    ev = json.loads(TRACE.read_text())
    t = 0.0
    for e in ev["traceEvents"]:
        if e["cat"] == "kernel":
            e["dur"] *= 20
            e["ts"], t = t, t + e["dur"]
    dense = advise.from_trace(ev)
    assert dense["overall"] != "launch-bound" and dense["gpu_busy_fraction"] > 0.99


def test_cli_stores_advice_and_learns_from_outcomes(tmp_path, capsys):
    db = str(tmp_path / "t.db")
    assert advise.main(["--trace", str(TRACE), "--db", db]) == 0
    assert "CUDA graph" in capsys.readouterr().out
    assert advise.main(["--report_id", "1", "--outcome", "worked: graphs took the step from 1.9 ms to 0.6 ms",
                        "--db", db]) == 0
    assert advise.main(["--trace", str(TRACE), "--db", db]) == 0
    assert "worked before (report 1): worked: graphs" in capsys.readouterr().out
    assert advise.main(["--summary", str(tmp_path / "none.json"), "--db", db]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('[{"name": "x", "value": 1, "unit": "GB/s"}]')
    assert advise.main(["--summary", str(bad), "--db", db]) == 2
    assert advise.main(["--report_id", "99", "--outcome", "worked", "--db", db]) == 2
    err = capsys.readouterr().err
    assert "none.json" in err and "no measured ceiling" in err and "no such report" in err
