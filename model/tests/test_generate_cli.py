"""The model.generate binary: its run() on Options, and one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.generate import Options, run

# Not resolved: under Bazel this file is a symlink and the runfiles tree is the root.
REPO = Path(__file__).absolute().parents[2]


def run_cli(*args):
    """Run `python -m model.generate ARGS` from the repo root; return the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "model.generate", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def error_line(proc) -> str:
    """Assert exit 2 with exactly one `error: ...` line on stderr and no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_default_is_lab_small_and_prints_text():
    proc = run_cli("--max_new_tokens", "24")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ROMEO:")  # the default prompt, then the continuation
    assert "[lab-small on cpu float32] 24 tokens" in proc.stderr
    words = proc.stdout.split()
    assert len(words) >= 8 and sum(w.isalpha() for w in words) >= len(words) // 2  # words, not bytes


def test_embedded_model_record():
    rec = run(Options(checkpoint="embedded", prompt="Hi", max_new_tokens=8))
    assert {"prompt_ids", "output_ids", "text", "tokens_per_s"} <= set(rec)
    assert rec["prompt_ids"] == [256, ord("H"), ord("i")]  # byte tokenizer with BOS
    assert len(rec["output_ids"]) <= 8 and rec["tokens_per_s"] >= 0
    again = run(Options(checkpoint="embedded", prompt="Hi", max_new_tokens=8))
    assert again["output_ids"] == rec["output_ids"]  # deterministic embedded model


def test_json_flag_prints_one_object():
    proc = run_cli("--checkpoint", "embedded", "--json", "--prompt_ids", "1,2,3", "--max_new_tokens", "2")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["prompt_ids"] == [1, 2, 3]


def test_prompt_ids_and_sampling_options():
    rec = run(Options(checkpoint="embedded", prompt_ids="1,2,3", max_new_tokens=4, temperature=0.8, top_k=20,
                      top_p=0.9, seed=3))
    assert rec["prompt_ids"] == [1, 2, 3] and 1 <= len(rec["output_ids"]) <= 4


def test_preset_with_random_weights():
    rec = run(Options(checkpoint="tiny", prompt_ids="1,2", max_new_tokens=3, dtype="bf16"))
    assert rec["dtype"] == "bfloat16" and len(rec["output_ids"]) == 3


def test_missing_checkpoint_dir(tmp_path):
    line = error_line(run_cli("--checkpoint", str(tmp_path / "missing")))
    assert "checkpoint directory not found" in line


def test_prompt_longer_than_context():
    line = error_line(run_cli("--checkpoint", "embedded", "--prompt", "x" * 300, "--max_new_tokens", "4"))
    assert "exceeds the model context" in line


def test_unknown_device_and_dtype():
    assert "unknown --device" in error_line(run_cli("--device", "tpu"))
    assert "unknown --dtype" in error_line(run_cli("--dtype", "int3"))


def test_bad_sampling_and_prompt_flags():
    assert "--temperature must be 0 (greedy) or a finite value >= 1e-05, got 1e-40" in error_line(
        run_cli("--checkpoint", "embedded", "--temperature", "1e-40"))
    assert "--prompt is not valid UTF-8" in error_line(
        run_cli("--checkpoint", "embedded", "--prompt", b"\xff\xfe".decode("utf-8", "surrogateescape")))


def test_nan_checkpoint_is_one_error_line(tmp_path):
    import torch

    import model
    from model.weights import save_model

    net = model.load("embedded")
    with torch.no_grad():
        net.model.norm.weight[0] = float("nan")
    save_model(net, tmp_path)
    line = error_line(run_cli("--checkpoint", str(tmp_path), "--prompt_ids", "1,2"))
    assert f"tensor model.norm.weight in {tmp_path}/model.safetensors has 1 non-finite" in line


def test_missing_tokenizer_fallback_only_for_a_byte_vocab(capsys):
    from model.device import UsageError
    from model.generate import pick_tokenizer
    from model.tokenizer import ByteTokenizer

    with pytest.raises(UsageError, match=r"/ckpt has no tokenizer.json or tokenizer.model and its vocab \(32000\)"):
        pick_tokenizer("/ckpt", 32000)
    assert pick_tokenizer("/ckpt", 32000, needed=False) is None  # --prompt_ids: ids in, ids out
    assert isinstance(pick_tokenizer("/ckpt", 258), ByteTokenizer)
    assert "warning: /ckpt has no tokenizer files; using the byte tokenizer" in capsys.readouterr().err
    assert isinstance(pick_tokenizer(None, 512), ByteTokenizer)  # random weights: no checkpoint, no warning


def test_speculative_flags_give_plain_greedy_output():
    """--speculative draft|ngram (decoding.speculative): same greedy ids as plain decoding, plus its counts."""
    plain = run(Options(prompt="ROMEO:", max_new_tokens=16))
    for method in ("draft", "ngram", "heads", "eagle"):  # heads, eagle: models/lab-small-medusa, lab-small-eagle
        rec = run(Options(prompt="ROMEO:", max_new_tokens=16, speculative=method, num_speculative_tokens=3))
        assert rec["output_ids"] == plain["output_ids"], method
        sp = rec["speculative"]
        assert sp["method"] == method and sp["target_forwards"] <= 16
        assert sp["acceptance_rate"] is None or 0.0 <= sp["acceptance_rate"] <= 1.0
    proc = run_cli("--speculative", "ngram", "--max_new_tokens", "8", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["speculative"]["method"] == "ngram", proc.stderr
    proc = run_cli("--speculative", "draft", "--num_speculative_tokens", "0")
    assert "--num_speculative_tokens must be in [1, 32]" in error_line(proc)
    proc = run_cli("--speculative", "draft", "--draft_checkpoint", "embedded", "--max_new_tokens", "2")
    assert "must share the target's tokenizer" in error_line(proc)
    proc = run_cli("--checkpoint", "lab-draft", "--speculative", "heads", "--max_new_tokens", "2")
    assert "--heads_checkpoint: " in error_line(proc) and "config.json: heads for hidden size 384" in error_line(proc)
    proc = run_cli("--checkpoint", "lab-draft", "--speculative", "eagle", "--max_new_tokens", "2")
    assert "--eagle_checkpoint: " in error_line(proc) and "config.json: a head for" in error_line(proc)
