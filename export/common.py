"""What every export binary shares: the source model, the git revision, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

import torch


class ExportError(ValueError):
    """Bad input to an export (flags, shapes, checkpoint); reported as `error: ...`, exit 2."""


def load_source_model(checkpoint: Optional[str], dtype: torch.dtype = torch.float32,
                      device="cpu") -> torch.nn.Module:
    """model.load of --checkpoint (None: the embedded tiny model), in eval mode."""
    import model

    return model.load(checkpoint or "embedded", dtype=dtype, device=device)


def define_overwrite_flag() -> None:
    """--overwrite, the one way past model.output_dir's refusal of a non-empty --output."""
    from absl import flags

    flags.DEFINE_bool("overwrite", False, "Empty a non-empty --output that this binary did not write and "
                      "write there. Default off: such a folder is refused and left untouched.")


def prepare_output(output: str, writer: str, checkpoint: Optional[str], overwrite: bool,
                   create: bool = True) -> str:
    """--output made ready by model.output_dir.prepare_output_dir (never the --checkpoint folder,
    never someone else's files without --overwrite); returns its absolute path. create=False only
    checks (model.output_dir.check_output_dir): what a binary does with its other flags, before work."""
    from model.loader import checkpoint_dir
    from model.output_dir import check_output_dir, prepare_output_dir

    prepare = prepare_output_dir if create else check_output_dir
    return prepare(output, writer=writer, flag="--output", overwrite=overwrite,
                   inputs={"--checkpoint": checkpoint_dir(checkpoint or "embedded")})


def parse_dtype(name: str) -> torch.dtype:
    """The --dtype flag as a torch.dtype (model.device's table), or ExportError."""
    from model.device import UsageError, parse_dtype as parse

    try:
        return parse(name)
    except UsageError as e:
        raise ExportError(str(e)) from None


def git_revision() -> str:
    """`git rev-parse HEAD` of the repo this file sits in (+"-dirty"), or "unknown"."""
    root = os.environ.get("BUILD_WORKSPACE_DIRECTORY") or os.path.dirname(
        os.path.dirname(os.path.abspath(__file__)))
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (rev + ("-dirty" if dirty else "")) if rev else "unknown"


def run_main(main_fn) -> None:
    """absl entry: run main_fn(argv); ExportError and friends become one `error:` line, exit 2."""
    from absl import app

    from model.config import ConfigError
    from model.output_dir import OutputDirError
    from model.weights import CheckpointError

    def wrapped(argv):
        if len(argv) > 1:
            print(f"error: unexpected arguments {argv[1:]}; pass flags only", file=sys.stderr)
            return 2
        try:
            return main_fn(argv) or 0
        except (ExportError, ConfigError, CheckpointError, OutputDirError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2

    app.run(wrapped)


def step_flags(min_prompt: int = 1) -> list[int]:
    """Validate the flags define_step_flags made, before any export work; return the prompt ids.

    Raises ExportError naming the flag: --prompt_ids not comma-separated ids >= 0 (at least
    min_prompt of them), --max_new_tokens or --max_seq_len < 1, a prompt that does not fit. (--output
    is checked by prepare_output, which the binaries call next.)
    """
    from absl import flags

    f = flags.FLAGS
    prompt = parse_ids(f.prompt_ids, "--prompt_ids")
    if len(prompt) < min_prompt:
        raise ExportError(f"--prompt_ids needs at least {min_prompt} id(s), got {f.prompt_ids!r}")
    for name in ("max_new_tokens", "max_seq_len"):
        if getattr(f, name) < 1:
            raise ExportError(f"--{name} must be >= 1, got {getattr(f, name)}")
    if len(prompt) + f.max_new_tokens > f.max_seq_len:
        raise ExportError(f"prompt ({len(prompt)} ids) + --max_new_tokens ({f.max_new_tokens}) "
                          f"exceeds --max_seq_len {f.max_seq_len}")
    return prompt


def parse_ids(text: str, flag: str) -> list[int]:
    """model.device.parse_ids ('1,2,3' -> [1, 2, 3], every id >= 0), or ExportError naming flag."""
    from model.device import UsageError, parse_ids as parse

    try:
        return parse(text, flag)
    except UsageError as e:
        raise ExportError(str(e)) from None


def check_prompt_vocab(prompt: list[int], model) -> None:
    """ExportError unless every prompt id is < the model's vocab_size."""
    if max(prompt) >= model.config.vocab_size:
        raise ExportError(f"--prompt_ids must be < vocab_size {model.config.vocab_size}, got {max(prompt)}")


def define_step_flags(output_default: str, output_help: str) -> None:
    """The flags the KV-step exporters (AOTI, ONNX) share: source model, output, cache, prompt."""
    from absl import flags

    flags.DEFINE_string("checkpoint", None, "HF-layout checkpoint directory or a model.load name (lab-small, "
                        "lab-draft, a preset). Default None: the embedded tiny model of model/embedded.py.")
    flags.DEFINE_string("output", output_default, output_help + " Relative to where you ran the command; "
                        "a non-empty folder this binary did not write is refused (see --overwrite). "
                        "Default under /tmp so a run never writes into the source tree.")
    define_overwrite_flag()
    flags.DEFINE_integer("max_seq_len", 64, "KV cache length in tokens (static: baked into the graph). "
                         "Default 64: prompt + new tokens of the parity check, small and quick.")
    flags.DEFINE_string("prompt_ids", "256,72,101,108,108,111", "Comma-separated prompt ids. Default: "
                        "BOS + 'Hello' in the byte tokenizer of the embedded model.")
    flags.DEFINE_integer("max_new_tokens", 16, "Greedy tokens compared with eager. Default 16.")
