"""Output directories every writer (export/, quant/, train/, model.save_model) prepares the same way.

The rule, in one place: a writer never overwrites a directory it did not create.
  - a new path is created, with a marker file (MARKER: JSON naming the writer);
  - an existing empty directory is taken, and marked;
  - an existing directory marked by the same writer is reused (an earlier run of ours);
  - anything else (someone's files, a checkpoint, another writer's output) is refused with
    one error naming the flag, unless overwrite=True, which empties it first;
  - an output that is an input, contains one or sits inside one (real paths) is refused
    always: writing or emptying it would destroy the input.
It lives in model/ (beside loader.user_path, whose path rule it reuses) because model/ is the
lowest package every writer already imports: export/, quant/ and train/ all depend on it.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Mapping, Optional, Union

from model.loader import user_path

MARKER = ".lab_output"


class OutputDirError(ValueError):
    """An output directory a writer must not touch; the message is one line naming the flag."""


def _marker_writer(path: str) -> Optional[str]:
    """The writer named by path's marker file, or None when it has none (or it is unreadable)."""
    try:
        with open(os.path.join(path, MARKER)) as f:
            return json.load(f).get("writer")
    except (OSError, ValueError, AttributeError):
        return None


def _nested(a: str, b: str) -> bool:
    """Whether real path a equals b or lies inside it."""
    return a == b or a.startswith(b.rstrip(os.sep) + os.sep)


def _check_inputs(out: str, flag: str, inputs: Mapping[str, Optional[Union[str, os.PathLike]]]) -> None:
    """Refuse an output that is, contains or sits inside one of the inputs (flag -> path)."""
    for in_flag, in_path in inputs.items():
        if in_path is None:
            continue
        real_in = os.path.realpath(user_path(in_path))
        if _nested(out, real_in) or _nested(real_in, out):
            how = "is" if out == real_in else ("is inside" if _nested(out, real_in) else "contains")
            raise OutputDirError(f"{flag} {out} {how} the input {in_flag} {real_in}; writing there would "
                                 f"destroy the input: choose another {flag}")


def _empty(path: str) -> None:
    """Remove everything inside path (not path itself)."""
    for name in os.listdir(path):
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full)
        else:
            os.remove(full)


def check_output_dir(path: Union[str, os.PathLike], *, writer: str, flag: str = "--output",
                     overwrite: bool = False,
                     inputs: Mapping[str, Optional[Union[str, os.PathLike]]] = {}) -> str:
    """The rule of the module docstring, touching nothing: return `path` absolute (a user path:
    relative to where the command ran) if `writer` may use it, else raise OutputDirError.

    flag: how the error names the path (a flag, or an argument of a library call).
    inputs: flag -> path of what the writer reads (None entries are skipped).
    Binaries call it with their other flag checks, before any long work.
    """
    path = user_path(path)
    out = os.path.realpath(path)
    _check_inputs(out, flag, inputs)
    if out in (os.sep, os.path.realpath(os.path.expanduser("~"))):
        raise OutputDirError(f"{flag} {path} is a filesystem root or home directory; choose a folder of its own")
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"{flag} {path} exists and is not a directory")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        owner = _marker_writer(path)
        if owner != writer:
            whose = f"was written by {owner}" if owner else f"was not written by {writer} (no {MARKER} marker)"
            raise OutputDirError(f"{flag} {path} is not empty and {whose}; choose a new or empty directory, "
                                 f"or pass --overwrite to replace its contents")
    return path


def prepare_output_dir(path: Union[str, os.PathLike], *, writer: str, flag: str = "--output",
                       overwrite: bool = False,
                       inputs: Mapping[str, Optional[Union[str, os.PathLike]]] = {}) -> str:
    """check_output_dir, then make the directory ready for `writer` (created and marked, or emptied
    with overwrite, or an earlier output of the same writer kept); return it absolute."""
    path = check_output_dir(path, writer=writer, flag=flag, overwrite=overwrite, inputs=inputs)
    if os.path.isdir(path) and os.listdir(path):
        if not overwrite:  # check_output_dir let it through: an earlier output of this writer
            return path
        _empty(path)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, MARKER), "w") as f:
        json.dump({"writer": writer}, f)
        f.write("\n")
    return path
