"""Load and save Llama checkpoints in the Hugging Face safetensors layout.

Loading builds the model on the meta device and assigns tensors read one at a time
from safetensors files, so an 8B model never needs two copies in memory. Pickle
(`pytorch_model.bin`) is never read.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model import arch
from model.config import ModelConfig, read_json
from model.device import SHORT_NAMES, UsageError, dtype_name, parse_dtype
from model.llama import Transformer

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message is one line saying why."""


@contextlib.contextmanager
def open_safetensors(fname: str, error: type = CheckpointError):
    """safe_open(fname) on the CPU; a truncated or foreign file raises `error` naming it."""
    try:
        with safe_open(fname, framework="pt", device="cpu") as f:
            yield f
    except (SafetensorError, OSError) as e:
        raise error(f"cannot read {fname} as safetensors: {e}") from None


def weight_files(path: str, error: type = CheckpointError) -> dict[str, str]:
    """Map each tensor name to the safetensors file holding it (model.safetensors or an index
    whose shards all lie inside path); raise `error` naming the file when that cannot be done."""
    index = os.path.join(path, INDEX_FILE)
    if os.path.isfile(index):
        weight_map = read_json(index, error)
        weight_map = weight_map.get("weight_map") if isinstance(weight_map, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise error(f"{index} has no weight_map object (tensor name -> shard file)")
        files = {}
        for name, fname in weight_map.items():
            # A shard is a plain file name beside the index: never a path that leaves the directory.
            if not isinstance(fname, str) or os.path.basename(fname) != fname or fname in ("", ".", ".."):
                raise error(f"{index} maps {name} to {fname!r}, not a file name inside {path}")
            full = os.path.join(path, fname)
            if not os.path.isfile(full):
                raise error(f"{index} names shard {fname} which is missing from {path}")
            files[name] = full
        return files
    single = os.path.join(path, SINGLE_FILE)
    if os.path.isfile(single):
        with open_safetensors(single, error) as f:
            return {name: single for name in f.keys()}
    if any(n.endswith(".bin") or n.endswith(".pt") or n.endswith(".pth") for n in os.listdir(path)):
        raise error(
            f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; pickle .bin/.pt weights are not loaded: "
            "convert with transformers (AutoModelForCausalLM.from_pretrained(p).save_pretrained(p))")
    raise error(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}; expected safetensors weights")


def _resolve_dtype(dtype, config: ModelConfig) -> torch.dtype:
    """Turn a dtype name, torch.dtype or None (= the checkpoint's dtype) into a torch.dtype."""
    try:
        return parse_dtype(config.torch_dtype if dtype is None else dtype, flag="dtype")
    except UsageError as e:
        raise CheckpointError(str(e)) from None


def load_model(path: str, device="cpu", dtype=None, tp=None) -> Transformer:
    """Load a HF-layout checkpoint directory (config.json + safetensors) into a Transformer.

    dtype: torch.dtype or name; None keeps the checkpoint's `torch_dtype`.
    tp: a callable config -> model.tp.TPPlan (one tensor-parallel rank): build that rank's model and
    read only its slices of each tensor (safetensors get_slice), so no process holds the whole model.
    A config.json with a quantization_config (GPTQ, AWQ, or quant/'s own) is read by
    quant.load_quantized. Raises CheckpointError (or ConfigError for unsupported configs,
    quant.QuantizationError for a bad quantized one) with a one-line reason.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint directory not found: {path}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise CheckpointError(f"no config.json in {path}; expected a Hugging Face checkpoint directory")
    if _quantized(path):  # GPTQ / AWQ / lab quantized checkpoints: quant/ owns their formats
        if tp is not None:
            raise CheckpointError(f"{path} is a quantized checkpoint; tensor parallelism does not split "
                                  "quantized layers yet: run it with tp=1")
        from quant import load_quantized  # lazy: quant depends on model, not the reverse

        return load_quantized(path, device=device, dtype=dtype)
    config = ModelConfig.from_hf_config(os.path.join(path, "config.json"))
    dtype = _resolve_dtype(dtype, config)
    files = weight_files(path)

    tp_plan = tp(config) if tp is not None else None
    with torch.device("meta"):
        model = Transformer(config)
        expected = {k: v.shape for k, v in model.state_dict().items()}  # the whole model's shapes
        if tp_plan is not None:
            model = tp_plan.build()
    tied = config.tie_word_embeddings
    ours = sorted(set(expected) - ({"lm_head.weight"} if tied else set()))
    # Our names -> the checkpoint's (model/arch.py: renames, fused tensors split, experts stacked).
    plan = arch.checkpoint_plan(config, ours)
    source_shape = arch.source_shapes(plan, expected)
    wanted = set(source_shape)
    ours_of = {}  # checkpoint name -> our name, for the tensor-parallel slices (plain copies only)
    if tp_plan is not None:
        fused = sorted(n for n, entry in plan.items() if not arch.is_plain_copy(entry))
        if fused:
            raise CheckpointError(f"{path}: tensor parallelism reads one checkpoint tensor per weight; this "
                                  f"{config.arch} checkpoint fuses or stacks {_short(fused)}: run it with tp=1")
        ours_of = {srcs[0]: name for name, (srcs, _) in plan.items()}
    names = set(files) - {n for n in files if n.endswith("rotary_emb.inv_freq")}
    if tied:
        names.discard("lm_head.weight")  # some tied checkpoints still store a copy
    missing, unexpected = sorted(wanted - names), sorted(names - wanted)
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {len(missing)} tensor(s): {_short(missing)}")
    if unexpected:
        raise CheckpointError(f"checkpoint {path} has {len(unexpected)} unexpected tensor(s): "
                              f"{_short(unexpected)}")

    read = {}
    by_file: dict[str, list[str]] = {}
    for name in sorted(wanted):
        by_file.setdefault(files[name], []).append(name)
    for fname, tensor_names in by_file.items():
        with open_safetensors(fname) as f:
            for name in tensor_names:
                index = tp_plan.index(ours_of[name]) if tp_plan is not None else None
                t = read_float_tensor(f, fname, name, tuple(source_shape[name]), index=index).to(dtype=dtype).to(device)
                check_finite(t, name, fname, dtype)  # on the target device: a GPU scans 8B weights in ms
                read[name] = t
    state = {}
    for name in ours:  # a copy is the tensor itself; a split is a view of the fused rows
        srcs, combine = plan[name]
        state[name] = combine([read[s] for s in srcs]).contiguous()
    if tied:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()  # assign=True replaced the shared Parameter; share it again
    return model.eval()


def _quantized(path: str) -> bool:
    """Whether path's config.json carries a quantization_config (then quant.load_quantized reads it)."""
    import json

    try:
        with open(os.path.join(path, "config.json")) as f:
            raw = json.load(f)
    except (OSError, ValueError):
        return False  # load_model reports the problem with its own message
    return isinstance(raw, dict) and isinstance(raw.get("quantization_config"), dict)


def read_float_tensor(f, fname: str, name: str, shape: tuple, error: type = CheckpointError,
                      index: Optional[tuple] = None) -> torch.Tensor:
    """Tensor `name` of the open safetensors file f, which must have `shape` and a floating dtype
    (an int8 or bool tensor where float weights belong is refused, not cast); `error` otherwise.
    index (a tuple of slices): read only that part of it (the file's other bytes are never read)."""
    sl = f.get_slice(name)
    got = tuple(sl.get_shape())
    if got != shape:
        raise error(f"tensor {name} in {fname}: config.json implies shape {shape} but the checkpoint has {got}")
    if sl.get_dtype() not in FLOAT_CODES:
        raise error(f"tensor {name} in {fname} has dtype {sl.get_dtype()}; float weights are expected "
                    f"({', '.join(FLOAT_CODES)})")
    try:
        return f.get_tensor(name) if index is None else sl[index]
    except (SafetensorError, OSError, RuntimeError) as e:
        raise error(f"cannot read tensor {name} from {fname}: {e}") from None


# safetensors dtype codes of the floating types a weight may be stored in.
FLOAT_CODES = ("F32", "F16", "BF16", "F64")


def check_finite(t: torch.Tensor, name: str, fname: str, dtype: torch.dtype, error: type = CheckpointError) -> None:
    """Raise `error` naming tensor and file when t (already in the load dtype) holds NaN or Inf."""
    bad = t.numel() - int(torch.isfinite(t).sum())
    if bad:
        raise error(f"tensor {name} in {fname} has {bad} non-finite (NaN/Inf) value(s) in {dtype_name(dtype)}; "
                    "the checkpoint is corrupt or overflows this dtype")


def _short(names: list[str], n: int = 5) -> str:
    """Join up to n names for a one-line message."""
    more = f" (+{len(names) - n} more)" if len(names) > n else ""
    return ", ".join(names[:n]) + more


def split_shards(tensors: dict, max_shard_bytes=None) -> list[dict]:
    """Split named tensors, in order, into shards of at most max_shard_bytes (None: one shard)."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_model(model: Transformer, path: str, max_shard_bytes: Optional[int] = None, *,
               overwrite: bool = False, flag: str = "path", extra_config: Optional[dict] = None,
               metadata: Optional[dict[str, str]] = None, state: Optional[dict] = None) -> None:
    """Write config.json and safetensors weights in the Hugging Face layout.

    One model.safetensors when everything fits in max_shard_bytes (or it is None);
    otherwise model-0000i-of-0000n.safetensors shards plus model.safetensors.index.json
    with metadata.total_size and weight_map, as `save_pretrained` writes them.
    Tied lm_head.weight is not stored (HF omits it too). extra_config: keys added to config.json
    (quant.save_quantized's quantization_config). metadata: strings added to every safetensors
    file's header (train.checkpoint's step). state: the tensors to write instead of model.state_dict()
    (quant.save_quantized's packed GPTQ/AWQ tensors).

    `path` follows model.output_dir.prepare_output_dir (flag names it in errors): a directory
    someone else wrote is refused unless overwrite. Over an earlier save of ours the files are
    written into a temporary folder inside `path`, renamed into place, and the weight files of
    the old save that the new one does not name (its index, shards or single file) are deleted,
    so the loader never reads stale weights.
    """
    from model.output_dir import prepare_output_dir

    path = prepare_output_dir(path, writer="model.save_model", flag=flag, overwrite=overwrite)
    config = model.config
    state = {k: v.detach().contiguous().cpu() for k, v in (model.state_dict() if state is None else state).items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    hf = config.to_hf_config()
    weight_dtype = model.model.embed_tokens.weight.dtype
    hf["dtype"] = dtype_name(weight_dtype) if weight_dtype in SHORT_NAMES else hf["dtype"]
    hf.update(extra_config or {})
    tmp = tempfile.mkdtemp(prefix=".saving-", dir=path)
    try:
        names = _write_weights(state, tmp, max_shard_bytes, {"format": "pt", **(metadata or {})})
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(hf, f, indent=2, sort_keys=True)
        _move_into_place(tmp, path, names)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _is_weight_file(name: str) -> bool:
    """Whether a file name is one save_model writes: the index, the single file or a shard."""
    return name in (SINGLE_FILE, INDEX_FILE) or re.fullmatch(r"model-\d{5}-of-\d{5}\.safetensors", name) is not None


def _write_weights(state: dict, out: str, max_shard_bytes: Optional[int], meta: dict) -> list[str]:
    """Write state as one file or shards + index into out; return the file names, index last."""
    shards = split_shards(state, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(out, SINGLE_FILE), metadata=meta)
        return [SINGLE_FILE]
    weight_map, names = {}, []
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(out, fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
        names.append(fname)
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out, INDEX_FILE), "w") as f:
        json.dump(index, f, indent=2)
    return names + [INDEX_FILE]


def _move_into_place(tmp: str, path: str, names: list[str]) -> None:
    """Rename tmp's weight files (index last) and config.json into path; delete the old save's others.

    A stale index goes first (the loader prefers an index), stale shards and single file last.
    """
    stale = [n for n in os.listdir(path) if _is_weight_file(n) and n not in names]
    if INDEX_FILE in stale:
        os.remove(os.path.join(path, INDEX_FILE))
    for name in names + ["config.json"]:
        os.replace(os.path.join(tmp, name), os.path.join(path, name))
    for name in stale:
        if name != INDEX_FILE:
            os.remove(os.path.join(path, name))
