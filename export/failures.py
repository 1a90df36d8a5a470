"""Failure capture for the export binaries: one JSON line per failed run, in one append-only log.

    @failures.capture("export.aoti", dtype="float32")
    def main(argv): ...

When the wrapped `main` raises, one record is appended to the log and the binary says
where (one line on stdout, so a usage error keeps its single `error: ...` line on
stderr); then the exception goes on exactly as before (`common.run_main` turns user
errors into `error: ...`, exit 2; anything else is absl's traceback, exit 1). Logging
never hides the real failure: if the log cannot be written, a note says so.

Where: `$LAB_FAILURES_LOG`, else `~/.cache/lab/failures.jsonl`. Flag-parsing errors
(absl rejects a flag before `main` runs) and KeyboardInterrupt are not recorded.

Format (JSON Lines, UTF-8, one object per line, appended; "schema" is bumped only
when a field changes meaning or disappears, new fields may appear at any time):
  schema       1
  time         UTC ISO-8601 with seconds, "2025-01-31T12:00:00+00:00"
  binary       "export.trt_llm", "export.aoti", "export.onnx_export", "export.torch_trt"
  kind         "usage" (ExportError, ConfigError, CheckpointError: bad flags, shapes,
               checkpoint) or "error" (anything else: a bug or a library limitation)
  argv         the command line, list of strings (sys.argv)
  flags        {name: value} of the binary's own flags (those of export.* modules and
               the main script; absl's own are left out), values JSON-safe
  exported     {"checkpoint": path or "embedded", "dtype": str, "quant": str, ...,
               "inputs": {"input_ids": {"shape", "dtype"}, ...} from --prompt_ids and
               --max_seq_len where the binary has them (the KV-step exports)}
  versions     {"python", "torch", "cuda", "onnx", "onnxscript", "onnxruntime",
               "tensorrt", "tensorrt_llm", "torch_tensorrt"}: installed version
               strings, null when absent (read from package metadata, nothing imported)
  git          `git rev-parse HEAD` (+"-dirty") or "unknown"
  exception    {"type": "module.QualName", "message": str (at most 4000 chars),
                "traceback": [str, ...] the last 12 frames "file:line in func: code",
                "chain": [{"type", "message"}, ...] __cause__/__context__ exceptions}
  failing_op   "aten.index_copy.default"-style name parsed from the messages and
               traceback (torch.export, dynamo, FX, onnx exporters, torch_tensorrt),
               null when none is recognisable (best effort)
  failing_node FX node name ("index_copy_3") when a message names one, else null
  context      (records of `record_event` only) {target, device, inputs, numbers, ...}:
               what the bench gate, parity plugin or Bazel build event knew

Other sources (bench WRONG gates, the parity pytest plugin, Bazel build events) append
the same records through `record_event`; `triage/` reads this log into its database.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import os
import re
import sys
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

SCHEMA = 1
ENV_VAR = "LAB_FAILURES_LOG"
DEFAULT_LOG = "~/.cache/lab/failures.jsonl"
TRACEBACK_FRAMES = 12  # the frames nearest the raise: where the exporter gave up
MAX_MESSAGE = 4000  # exporter messages can embed whole graphs; the head names the problem

# Distributions whose versions an export failure depends on, by record key.
_DISTRIBUTIONS = {
    "torch": ("torch",),
    "onnx": ("onnx",),
    "onnxscript": ("onnxscript",),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "tensorrt": ("tensorrt", "tensorrt-cu12"),
    "tensorrt_llm": ("tensorrt_llm", "tensorrt-llm"),
    "torch_tensorrt": ("torch_tensorrt", "torch-tensorrt"),
}

# Operator namespaces that exporter messages name ops in ("aten.foo", "aten::foo",
# "torch.ops.prims.bar.default").
_OP_NAMESPACES = "aten|prims|quantized_decomposed|quantized|_quantized|torchvision|c10d|_c10d_functional|higher_order"
_OP_RE = re.compile(
    rf"\b(?:torch\._?ops\.)?({_OP_NAMESPACES})(?:\.|::)([A-Za-z_]\w*)(?:\.([A-Za-z_]\w*))?")
# FX node names: "While executing %index_copy_3 : ...", "node %add", "node 'add_1'",
# "Error when translating node %linear", onnx's "node_name='aten_add_3'".
_NODE_RES = (
    re.compile(r"(?:executing|translating node|node)\s+%(\w+)"),
    re.compile(r"\bnode(?:[ _]name)?\s*[=:]?\s*['\"](\w+)['\"]"),
)


def log_path() -> Path:
    """$LAB_FAILURES_LOG, else ~/.cache/lab/failures.jsonl (user and vars expanded)."""
    raw = os.environ.get(ENV_VAR) or DEFAULT_LOG
    return Path(os.path.expandvars(os.path.expanduser(raw)))


def library_versions() -> dict[str, Optional[str]]:
    """Installed versions of the export stack (package metadata: nothing is imported)."""
    import platform

    out: dict[str, Optional[str]] = {"python": platform.python_version()}
    for key, dists in _DISTRIBUTIONS.items():
        out[key] = None
        for dist in dists:
            try:
                out[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    torch = sys.modules.get("torch")
    out["cuda"] = getattr(getattr(torch, "version", None), "cuda", None) if torch else None
    return out


def failing_op(text: str) -> Optional[str]:
    """The first operator named in `text` as "ns.op" or "ns.op.overload" ("aten::foo" -> "aten.foo").

    Best effort over torch.export / dynamo / FX / onnx exporter wording; None if none.
    An overload is kept only when it follows directly ("aten.add.Tensor").
    """
    m = _OP_RE.search(text or "")
    if not m:
        return None
    ns, op, overload = m.groups()
    return f"{ns}.{op}" + (f".{overload}" if overload else "")


def failing_node(text: str) -> Optional[str]:
    """The first FX node name in `text` ("While executing %index_copy_3 : ..."), or None."""
    for rx in _NODE_RES:
        m = rx.search(text or "")
        if m:
            return m.group(1)
    return None


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def binary_flags() -> dict[str, Any]:
    """{name: value} of flags defined by export.* modules and the main script, if parsed."""
    try:
        from absl import flags
    except ImportError:
        return {}
    fv = flags.FLAGS
    if not fv.is_parsed():
        return {}
    main = os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    out = {}
    for module, defined in fv.flags_by_module_dict().items():
        mine = module.startswith("export") or module == "__main__" or (
            main and os.path.abspath(module) == main)
        if mine:
            for flag in defined:
                out[flag.name] = _jsonable(flag.value)
    return dict(sorted(out.items()))


def _chain(exc: BaseException) -> list[BaseException]:
    """exc, then its __cause__ / __context__ exceptions (no repeats)."""
    seen, out = set(), []
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _qualname(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _frames(exc: BaseException) -> list[str]:
    frames = traceback.extract_tb(exc.__traceback__)[-TRACEBACK_FRAMES:]
    return [f"{f.filename}:{f.lineno} in {f.name}: {(f.line or '').strip()}" for f in frames]


def make_record(binary: str, exc: BaseException, kind: str, exported: Mapping[str, Any] | None = None,
                flags: Mapping[str, Any] | None = None, argv: list[str] | None = None) -> dict[str, Any]:
    """The schema-1 record of `exc` (see the module docstring)."""
    from export.common import git_revision

    chain = _chain(exc)
    text = "\n".join(f"{_qualname(e)}: {e}" for e in chain)
    text += "\n" + "\n".join(line for e in chain for line in _frames(e))
    exception = {
        "type": _qualname(exc),
        "message": str(exc)[:MAX_MESSAGE],
        "traceback": _frames(exc),
        "chain": [{"type": _qualname(e), "message": str(e)[:MAX_MESSAGE]} for e in chain[1:]],
    }
    return _record(binary, kind, argv, dict(binary_flags() if flags is None else flags), exported or {},
                   git_revision(), exception, text)


def _record(binary: str, kind: str, argv: list[str] | None, flags: Mapping[str, Any],
            exported: Mapping[str, Any], git: str, exception: dict[str, Any], text: str) -> dict[str, Any]:
    """The fields every schema-1 record has, in order; `text` is what failing_op/node are parsed from."""
    return {
        "schema": SCHEMA,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "binary": binary,
        "kind": kind,
        "argv": list(sys.argv if argv is None else argv),
        "flags": _jsonable(dict(flags)),
        "exported": _jsonable(dict(exported)),
        "versions": library_versions(),
        "git": git,
        "exception": exception,
        "failing_op": failing_op(text),
        "failing_node": failing_node(text),
    }


def append_record(record: Mapping[str, Any], path: Path | None = None) -> Path:
    """Append `record` as one JSON line (parents created); returns the path written."""
    path = log_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=False, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:  # one write of one line: appends don't interleave
        f.write(line)
    return path


def _usage_errors() -> tuple[type, ...]:
    """What `common.run_main` reports as `error: ...`, exit 2: the "usage" kind."""
    from export.common import ExportError

    kinds: list[type] = [ExportError]
    try:
        from model.config import ConfigError
        from model.weights import CheckpointError

        kinds += [ConfigError, CheckpointError]
    except ImportError:
        pass
    return tuple(kinds)


def _exported_from_flags(flag_values: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    out["checkpoint"] = flag_values.get("checkpoint") or "embedded"
    for key in ("dtype", "quant", "tp_size", "max_seq_len"):
        if key in flag_values:
            out[key] = flag_values[key]
    prompt = flag_values.get("prompt_ids")
    if isinstance(prompt, str) and prompt.strip():  # the KV step's traced inputs (export/kv_step.py)
        t = len([x for x in prompt.split(",") if x.strip()])
        out["inputs"] = {"input_ids": {"shape": [1, t], "dtype": "int64"},
                         "input_pos": {"shape": [t], "dtype": "int64"}}
        if "max_seq_len" in out:
            out["inputs"]["k_cache"] = {"shape": ["n_layers", 1, "n_kv_heads", out["max_seq_len"], "head_dim"],
                                        "dtype": out.get("dtype")}
    return out


_DTYPE_WORD = re.compile(r"\b(b?float(?:16|32|64)|f(?:p|loat)8\w*|fp(?:16|32|64)|bf16|u?int(?:4|8|16|32|64)|"
                         r"w4a16|w8a16|w8a8|nvfp4|e4m3\w*|e5m2\w*)\b", re.IGNORECASE)
_SIZE = re.compile(r"\b([A-Za-z_]\w*)=(\d+)\b")
_SHAPE = re.compile(r"\b\d+(?:x\d+)+\b")


def inputs_from_text(text: str) -> dict[str, Any]:
    """The dtypes, `name=N` sizes and `AxB` shapes a failure line names ("rms_norm float16 M=4
    width=64" -> {"dtypes": ["float16"], "sizes": {"M": 4, "width": 64}}); empty keys left out."""
    out: dict[str, Any] = {"dtypes": list(dict.fromkeys(m.group(1) for m in _DTYPE_WORD.finditer(text))),
                           "sizes": {k: int(v) for k, v in _SIZE.findall(text)},
                           "shapes": _SHAPE.findall(text)}
    return {k: v for k, v in out.items() if v}


def record_failure(binary: str, exc: BaseException, exported_defaults: Mapping[str, Any] | None = None
                   ) -> Optional[Path]:
    """Build and append the record of `exc`; print where it went. Never raises."""
    try:
        kind = "usage" if isinstance(exc, _usage_errors()) else "error"
        flag_values = binary_flags()
        exported = _exported_from_flags(flag_values, exported_defaults or {})
        path = append_record(make_record(binary, exc, kind, exported, flag_values))
    except Exception as log_error:  # noqa: BLE001 - the real failure must still surface
        print(f"failure not recorded ({type(log_error).__name__}: {log_error})", flush=True)
        return None
    print(f"failure recorded in {path}", flush=True)
    return path


@contextlib.contextmanager
def capturing(binary: str, **exported_defaults: Any) -> Iterator[None]:
    """Record any Exception raised inside, then re-raise it unchanged."""
    try:
        yield
    except Exception as exc:
        record_failure(binary, exc, exported_defaults)
        raise


def capture(binary: str, **exported_defaults: Any) -> Callable:
    """Decorator form of `capturing` for a binary's `main(argv)`.

    `exported_defaults` describe what the binary exports when no flag says it
    (`dtype="float32"` for the AOTI and ONNX steps); --checkpoint, --dtype, --quant,
    --tp_size and --max_seq_len override them.
    """

    def wrap(main_fn: Callable) -> Callable:
        @functools.wraps(main_fn)
        def wrapped(argv):
            with capturing(binary, **exported_defaults):
                return main_fn(argv)

        return wrapped

    return wrap



def make_event(binary: str, kind: str, error_type: str, message: str, *,
               traceback_lines: list[str] | None = None, context: Mapping[str, Any] | None = None,
               argv: list[str] | None = None) -> dict[str, Any]:
    """The schema-1 record of a failure that is not a raised exception (see `record_event`)."""
    try:
        from export.common import git_revision

        git = git_revision()
    except Exception:  # noqa: BLE001 - a record without the revision beats no record
        git = "unknown"
    text = f"{error_type}: {message}\n" + "\n".join(traceback_lines or [])
    exception = {"type": error_type, "message": str(message)[:MAX_MESSAGE],
                 "traceback": list(traceback_lines or [])[-TRACEBACK_FRAMES:], "chain": []}
    return {**_record(binary, kind, argv, {}, {}, git, exception, text), "context": _jsonable(dict(context or {}))}


def record_event(binary: str, kind: str, error_type: str, message: str, *,
                 traceback_lines: list[str] | None = None, context: Mapping[str, Any] | None = None,
                 argv: list[str] | None = None, path: Path | None = None) -> Optional[Path]:
    """Append one schema-1 record for a failure that is not a raised exception; never raises.

    The one record function of the non-export sources (the bench WRONG gates, the parity
    pytest plugin, Bazel build events): `binary` names what ran ("bench.decode",
    "pytest parity/test_kernels.py::test_x", "bazel //pkg:target"), `kind` says which
    gate ("wrong", "parity", "build", "test"), `context` carries what else is known
    (target, device, input shapes/dtypes, the numbers of a failed comparison) under the
    record's "context" key. Prints nothing; returns the path written, or None.
    """
    try:
        record = make_event(binary, kind, error_type, message, traceback_lines=traceback_lines,
                            context=context, argv=argv)
        return append_record(record, path)
    except Exception:  # noqa: BLE001 - a failed gate must still report itself
        return None
