"""//triage:divergence on a tiny random HF checkpoint: agreement, and each planted fault found at its op."""

import copy

import pytest
import torch

from parity.hf_cases import FP32_TOL, make_hf, random_prompt, save_hf
from triage import divergence


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    path = save_hf(make_hf("gqa_tied", seed=3), tmp_path_factory.mktemp("ckpt"))
    ours, hf, n_layers, vocab = divergence.build_pair(str(path), "hf", 0)
    return ours, hf, n_layers, random_prompt(2, 16, vocab, seed=4), path


def run(ours, hf, n_layers, ids):
    return divergence.compare(ours, hf, ids, n_layers, FP32_TOL)


def test_no_parting_without_a_fault(pair):
    ours, hf, n, ids, _ = pair
    r = run(ours, hf, n, ids)
    assert r["first"] is None, r["rows"]
    assert len(r["rows"]) == 1 + 9 * n + 2, "every point of both models was captured and compared"
    assert r["rows"][-1]["point"] == "logits"


@pytest.mark.parametrize("fault,point,cls", [
    ("eps", "layers.1.norm1", "eps"),
    ("scale", "layers.0.attention", "rope_mask_or_scale"),
    ("swap_gate_up", "layers.0.mlp", "mlp"),
    ("untie", "logits", "weight_tying"),
])
def test_planted_fault_found_at_its_op(pair, fault, point, cls):
    ours, hf, n, ids, _ = pair
    ours, hf = copy.deepcopy(ours), copy.deepcopy(hf)
    with torch.no_grad():
        if fault == "eps":
            ours.model.layers[1].input_layernorm.eps = 1e-1
        elif fault == "scale":
            hf.model.layers[0].self_attn.scaling *= 1.5
        elif fault == "swap_gate_up":
            mlp = ours.model.layers[0].mlp
            mlp.gate_proj.weight, mlp.up_proj.weight = mlp.up_proj.weight, mlp.gate_proj.weight
        elif fault == "untie":
            ours.lm_head.weight = torch.nn.Parameter(ours.lm_head.weight.clone() * 1.01, requires_grad=False)
    r = run(ours, hf, n, ids)
    assert r["first"] is not None and r["first"]["point"] == point, r["rows"][:12]
    assert r["classification"]["class"] == cls, r["classification"]


def test_cli_quantized_table_plot_and_report(pair, tmp_path, monkeypatch, capsys):
    *_, path = pair
    monkeypatch.setenv("LAB_FAILURES_LOG", str(tmp_path / "f.jsonl"))
    db = tmp_path / "t.db"
    assert divergence.main(["--b", "quantized", "--checkpoint", str(path), "--plot", str(tmp_path / "d.png"),
                            "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "layers.0.q" in out and (tmp_path / "d.png").stat().st_size > 1000
    assert "report 1 stored" in out
    assert divergence.main(["--b", "quantized", "--checkpoint", str(tmp_path / "nope")]) == 2


def test_compiled_agrees_then_planted_fault_found(pair):
    """One Inductor compile of a tapped copy: agreement, then a norm weight scaled in place inside the
    compiled model (parameters are graph inputs, no recompile) is found at that norm."""
    ours, _, n, ids, _ = pair
    other = copy.deepcopy(ours)
    runner = divergence.compiled_runner(other, n, ids)
    r = run(ours, runner, n, ids)
    assert r["first"] is None, r["rows"]
    assert len(r["rows"]) == 1 + 9 * n + 2
    assert max(row["rel_err"] for row in r["rows"][1:]) > 0, "the compiled side ran its own kernels"
    with torch.no_grad():
        other.model.layers[1].input_layernorm.weight.mul_(1.01)
    r = run(ours, runner, n, ids)
    assert r["first"] is not None and r["first"]["point"] == "layers.1.norm1", r["rows"][:12]
    assert r["classification"]["class"] == "eps", r["classification"]


def test_onnx_agrees_and_planted_fault_found(pair, tmp_path):
    """The tapped ONNX export in onnxruntime: agreement; gate/up swapped before export found at the MLP."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    ours, _, n, ids, _ = pair
    r = run(ours, divergence.onnx_runner(copy.deepcopy(ours), n, ids, str(tmp_path / "a.onnx")), n, ids)
    assert r["first"] is None, r["rows"]
    assert len(r["rows"]) == 1 + 9 * n + 2
    bad = copy.deepcopy(ours)
    mlp = bad.model.layers[0].mlp
    mlp.gate_proj.weight, mlp.up_proj.weight = mlp.up_proj.weight, mlp.gate_proj.weight
    r = run(ours, divergence.onnx_runner(bad, n, ids, str(tmp_path / "b.onnx")), n, ids)
    assert r["first"] is not None and r["first"]["point"] == "layers.0.mlp", r["rows"][:12]
    assert r["classification"]["class"] == "mlp", r["classification"]
