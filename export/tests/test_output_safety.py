"""Export binaries never destroy a folder they did not write: foreign --output refused byte-identical,
--overwrite replaces it, --output equal to (or nested with) --checkpoint refused, relative --output
resolves against BUILD_WORKING_DIRECTORY."""

import os
import subprocess
import sys

from export.tests.cli import REPO, error_line, run_cli
from model.output_dir import MARKER
from model.weights import save_model
from model.config import ModelConfig
from model.llama import Transformer


def snapshot(path) -> dict:
    """Relative path -> bytes of every file under path."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


def hf_checkpoint(path):
    """A small HF-layout checkpoint, sharded, as a user's folder (our marker removed)."""
    model = Transformer(ModelConfig.from_name("tiny").replace(n_layers=1, vocab_size=300))
    save_model(model, path, max_shard_bytes=100_000)
    os.remove(os.path.join(path, MARKER))
    return path


def test_foreign_output_is_refused_and_left_untouched(tmp_path):
    out = hf_checkpoint(tmp_path / "theirs")
    before = snapshot(out)
    line = error_line(run_cli("trt_llm", "--output", str(out)))
    assert "--output" in line and "--overwrite" in line and "not empty" in line, line
    assert snapshot(out) == before


def test_overwrite_replaces_a_foreign_output(tmp_path):
    out = hf_checkpoint(tmp_path / "theirs")
    proc = run_cli("trt_llm", "--output", str(out), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    names = set(os.listdir(out))
    assert {"config.json", "rank0.safetensors", MARKER} <= names
    assert not any(n.startswith("model") for n in names), names  # the old shards are gone


def test_a_second_run_reuses_its_own_output(tmp_path):
    out = tmp_path / "mine"
    for _ in range(2):
        proc = run_cli("trt_llm", "--output", str(out))
        assert proc.returncode == 0, proc.stderr


def test_output_equal_to_or_inside_the_checkpoint_is_refused_even_with_overwrite(tmp_path):
    ckpt = hf_checkpoint(tmp_path / "ckpt")
    before = snapshot(ckpt)
    for out in (ckpt, ckpt / "sub", tmp_path):
        line = error_line(run_cli("trt_llm", "--checkpoint", str(ckpt), "--output", str(out), "--overwrite"))
        assert "--checkpoint" in line and "destroy the input" in line, line
    assert snapshot(ckpt) == before


def test_relative_output_resolves_against_build_working_directory(tmp_path):
    env = dict(os.environ, BUILD_WORKING_DIRECTORY=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "export.trt_llm", "--output", "rel_out"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rel_out" / "rank0.safetensors").is_file()
    assert not (REPO / "rel_out").exists()
