"""save_model and model.output_dir: no stale index or shards after a re-save, foreign folders refused
untouched, --overwrite empties, inputs never written into, relative paths from BUILD_WORKING_DIRECTORY."""

import os

import pytest
import torch

from model.config import ModelConfig
from model.llama import Transformer
from model.output_dir import MARKER, OutputDirError, prepare_output_dir
from model.weights import INDEX_FILE, SINGLE_FILE, load_model, save_model


def tiny(seed):
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_name("tiny").replace(n_layers=1, vocab_size=300))


def test_single_file_save_over_a_sharded_one_leaves_no_stale_index_or_shards(tmp_path):
    save_model(tiny(0), tmp_path, max_shard_bytes=100_000)
    assert (tmp_path / INDEX_FILE).is_file()
    new = tiny(1)
    save_model(new, tmp_path)
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(["config.json", SINGLE_FILE, MARKER]), names
    loaded = load_model(tmp_path).state_dict()
    for k, v in new.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_fewer_shards_over_more_shards_drops_the_extra_ones(tmp_path):
    save_model(tiny(0), tmp_path, max_shard_bytes=50_000)
    many = {n for n in os.listdir(tmp_path) if n.startswith("model-")}
    save_model(tiny(1), tmp_path, max_shard_bytes=150_000)
    few = {n for n in os.listdir(tmp_path) if n.startswith("model-")}
    assert len(few) < len(many) and not (few & many), (few, many)
    load_model(tmp_path)


def test_a_foreign_folder_is_refused_untouched_and_overwrite_empties_it(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputDirError, match=r"path .* is not empty .*--overwrite"):
        save_model(tiny(0), tmp_path)
    assert os.listdir(tmp_path) == ["notes.txt"]
    save_model(tiny(0), tmp_path, overwrite=True)
    assert not (tmp_path / "notes.txt").exists() and (tmp_path / SINGLE_FILE).is_file()


def test_another_writers_folder_is_refused(tmp_path):
    prepare_output_dir(tmp_path, writer="export.aoti")
    (tmp_path / "prefill.pt2").write_text("x")
    with pytest.raises(OutputDirError, match="was written by export.aoti"):
        prepare_output_dir(tmp_path, writer="export.trt_llm")


def test_inputs_are_never_outputs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text("{}")
    link = tmp_path / "link"
    link.symlink_to(src)
    for out in (src, link, src / "inner", tmp_path):
        with pytest.raises(OutputDirError, match="--checkpoint"):
            prepare_output_dir(out, writer="w", flag="--output", overwrite=True, inputs={"--checkpoint": src})
    assert sorted(os.listdir(src)) == ["config.json"]


def test_relative_paths_resolve_against_build_working_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(tmp_path))
    assert prepare_output_dir("out", writer="w") == str(tmp_path / "out")
    assert (tmp_path / "out" / MARKER).is_file()


def test_a_file_root_or_home_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputDirError, match="not a directory"):
        prepare_output_dir(tmp_path / "f", writer="w")
    with pytest.raises(OutputDirError, match="root or home"):
        prepare_output_dir("/", writer="w", overwrite=True)
