"""The OpenAI-compatible server: `tools/bazel run //serve:openai -- --checkpoint lab-small`.

  python3 -m serve.openai_server                       # lab-small on http://127.0.0.1:8000
  python3 -m serve.openai_server --host 0.0.0.0 --api_key "$KEY"   # exposed: a key is required
  curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' \\
       -d '{"model": "lab-small", "prompt": "Once upon a time", "max_tokens": 32}'

(The file is not serve/openai.py: run as a script, its folder leads sys.path and would hide
the `openai` client package.)
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
from typing import Optional

from absl import app as absl_app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "lab-small", "What to serve: lab-small, lab-draft, embedded, a preset, or an "
                    "HF-layout directory (relative to where you ran the command).")
flags.DEFINE_integer("n_layers", None, "Random weights (a preset --checkpoint) only: override the layer count.")
flags.DEFINE_integer("seed", None, "Random weights only: the weights' seed (default 0).")
flags.DEFINE_string("tokenizer", None, "A tokenizer file or folder for a checkpoint without one (a preset with random "
                    "weights: third_party/tokenizers/llama3/tokenizer.model for llama3-8b).")
flags.DEFINE_string("served_model_name", None, "The 'model' clients must send. Default: the checkpoint's folder name.")
flags.DEFINE_string("host", "127.0.0.1", "Address to bind. Anything but loopback needs --api_key.")
flags.DEFINE_integer("port", 8000, "TCP port.")
flags.DEFINE_string("api_key", None, "Require 'Authorization: Bearer <key>' on /v1/* and /metrics.")
flags.DEFINE_string("device", "auto", "cuda, cuda:N, cpu or auto (a GPU when visible).")
flags.DEFINE_string("dtype", None, "bf16, fp16, fp32. Default bf16 on a GPU, the checkpoint's on a CPU.")
flags.DEFINE_enum("policy", "chunked", ["static", "continuous", "chunked"], "Scheduling policy of the engine.")
flags.DEFINE_integer("max_num_seqs", 64, "Requests running at once.")
flags.DEFINE_integer("max_num_batched_tokens", None, "Tokens per step. Default the engine's (512 chunked).")
flags.DEFINE_integer("max_model_len", None, "Context limit, tokens. Default the model's.")
flags.DEFINE_integer("block_size", 16, "Tokens per KV block.")
flags.DEFINE_integer("num_blocks", None, "KV blocks (null block included). Default the engine's sizing.")
flags.DEFINE_integer("admission_batch", 1, "Free sequence slots a full engine waits for before admitting again.")
flags.DEFINE_integer("max_queue", 256, "Requests allowed to wait; beyond, 429 with Retry-After.")
flags.DEFINE_integer("cpu_threads", 1, "CPU: torch intra-op threads (1: the tiny models' ops are too small to "
                     "split, and the HTTP loop needs a core).")
flags.DEFINE_enum("log_level", "warning", ["debug", "info", "warning", "error"], "uvicorn's log level.")


class ServerUsageError(ValueError):
    """Bad flags: one `error: ...` line, exit 2."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_app(checkpoint: str = "lab-small", *, served_model_name: Optional[str] = None, api_key: Optional[str] = None,
             device: str = "auto", dtype: Optional[str] = None, max_queue: int = 256, tokenizer: Optional[str] = None,
             n_layers: Optional[int] = None, seed: Optional[int] = None, **engine_kwargs):
    """Load the model, build the LLMEngine, the AsyncEngine and the app. Returns the FastAPI app
    (app.state.engine is the AsyncEngine; the engine thread starts with the app)."""
    import model as lab_model
    from model.loader import checkpoint_dir, user_path
    from model.tokenizer import ByteTokenizer, has_tokenizer, load_tokenizer
    from scheduler import LLMEngine
    from serve.app import build_app
    from serve.async_engine import AsyncEngine
    from serve.chat_template import load_chat_template
    from serve.metrics import Metrics

    path = checkpoint_dir(checkpoint)
    m = lab_model.load(checkpoint, dtype=dtype if dtype else ("auto" if device != "cpu" else None), device=device,
                       seed=seed, n_layers=n_layers)
    tok_path = user_path(tokenizer) if tokenizer else path if path is not None and has_tokenizer(path) else None
    if tok_path is not None:
        tokenizer = load_tokenizer(tok_path)
        if tokenizer.vocab_size > m.config.vocab_size:
            raise ServerUsageError(f"--tokenizer {tok_path} has {tokenizer.vocab_size} ids, the model only "
                                   f"{m.config.vocab_size}")
    elif m.config.vocab_size == ByteTokenizer.vocab_size:
        tokenizer = ByteTokenizer()
    else:
        raise ServerUsageError(f"--checkpoint {checkpoint}: no tokenizer.json or tokenizer.model to serve text with")
    engine = LLMEngine(m, tokenizer, **{k: v for k, v in engine_kwargs.items() if v is not None})
    metrics = Metrics()
    name = served_model_name or os.path.basename(os.path.normpath(path or checkpoint))
    template = load_chat_template(tokenizer, path)
    return build_app(AsyncEngine(engine, max_queue, metrics), tokenizer, template, name, api_key)


class ServerThread:
    """uvicorn serving `app` on host:port in a thread of this process (tests, benchmarks)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level,
                                                    timeout_keep_alive=30))
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    @property
    def url(self) -> str:
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise ServerUsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not is_loopback(FLAGS.host) and not FLAGS.api_key:
        raise ServerUsageError(f"--host {FLAGS.host} exposes the server beyond this machine: pass --api_key too")
    if FLAGS.max_queue < 1:
        raise ServerUsageError(f"--max_queue must be >= 1, got {FLAGS.max_queue}")
    import torch
    import uvicorn

    from model.config import ConfigError
    from model.device import UsageError
    from model.tokenizer import TokenizerError
    from model.weights import CheckpointError

    try:
        from model.device import resolve_device

        device = str(resolve_device(FLAGS.device))
    except (UsageError, ValueError) as e:
        raise ServerUsageError(f"--device: {e}") from None
    if device == "cpu" and FLAGS.cpu_threads:
        torch.set_num_threads(FLAGS.cpu_threads)
    try:
        app = make_app(FLAGS.checkpoint, served_model_name=FLAGS.served_model_name, api_key=FLAGS.api_key,
                       device=device, dtype=FLAGS.dtype, max_queue=FLAGS.max_queue, policy=FLAGS.policy,
                       tokenizer=FLAGS.tokenizer, n_layers=FLAGS.n_layers, seed=FLAGS.seed,
                       admission_batch=FLAGS.admission_batch,
                       max_num_seqs=FLAGS.max_num_seqs, max_num_batched_tokens=FLAGS.max_num_batched_tokens,
                       max_model_len=FLAGS.max_model_len, block_size=FLAGS.block_size, num_blocks=FLAGS.num_blocks)
    except (CheckpointError, ConfigError, UsageError) as e:
        raise ServerUsageError(f"--checkpoint: {e}") from None
    except (FileNotFoundError, TokenizerError) as e:
        raise ServerUsageError(f"--tokenizer: {e}") from None
    except ValueError as e:  # the engine's settings
        raise ServerUsageError(str(e)) from None
    print(f"serving {FLAGS.checkpoint} on http://{FLAGS.host}:{FLAGS.port} (OpenAI API under /v1)", file=sys.stderr,
          flush=True)
    uvicorn.run(app, host=FLAGS.host, port=FLAGS.port, log_level=FLAGS.log_level, timeout_keep_alive=30)


def _main(argv: list[str]) -> int:
    try:
        main(argv)
    except ServerUsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    absl_app.run(_main)
