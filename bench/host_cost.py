"""Host cost of one engine step with the model stubbed out: schedule + update + outputs.

    python3 -m bench.host_cost [--tokenizer PATH]
    bazel run //bench:host_cost -- --tokenizer=/path/to/tokenizer.json

Not a benchmark of the model: the runner returns token 7 for every sampling request, so
what is timed is the Python the engine runs around each forward (the part a GPU step
cannot hide). 256 requests (prompts 100-600 ids, 64-1024 new tokens, seed 0) through a
continuous engine of 64 slots; prints p50/mean milliseconds over the steps with >= 60
running. Checks every request finished with its max_tokens and the pool is empty after
(a failed check raises: exit 1, nothing reported).
"""

from __future__ import annotations

import random
import statistics
import time

import torch
from absl import app, flags

from bench import common
from model.random_weights import random_model
from scheduler import SamplingParams
from scheduler.engine import LLMEngine
from scheduler.outputs import ModelRunnerOutput

FLAGS = flags.FLAGS
# --tokenizer means what bench.perplexity's does (a tokenizer path): overridable, so pytest can
# import both. --trace_requests is ours alone (bench.serving's --num_requests has another default).
common.define_flag("string", "tokenizer", None, "Tokenizer file or folder (model.tokenizer.load_tokenizer) the "
                   "engine decodes stop strings with. Default None: no tokenizer, the engine's bare host cost.")
flags.DEFINE_integer("trace_requests", 256, "Requests in the stubbed trace (default 256: four times the 64 "
                     "slots, so the engine runs full for most steps).")


def measure(tok=None, num_requests: int = 256, seed: int = 0) -> list[float]:
    """Run the stubbed trace; host milliseconds of each step with >= 60 running."""
    model = random_model("tiny", seed=0, max_seq_len=2048)
    vocab = model.config.vocab_size
    engine = LLMEngine(model, tok, policy="continuous", max_num_seqs=64, max_model_len=2048,
                       num_blocks=64 * 130 + 8, cuda_graph=False, fuse_projections=False)
    engine.runner.execute = lambda sched: ModelRunnerOutput({s.request_id: 7 for s in sched.scheduled if s.sample})
    rng = random.Random(seed)
    want = {}
    for _ in range(num_requests):
        n = rng.randint(64, 1024)
        rid = engine.add_request([rng.randrange(vocab) for _ in range(rng.randint(100, 600))],
                                 SamplingParams(max_tokens=n, ignore_eos=True))
        want[rid] = n
    got, times = {}, []
    while engine.has_unfinished_requests():
        t0 = time.perf_counter()
        outs = engine.step()
        dt = time.perf_counter() - t0
        if len(engine.scheduler.running) >= 60:
            times.append(dt * 1e3)
        got.update({o.request_id: len(o.token_ids) for o in outs if o.finished})
    if got != want:
        raise AssertionError("a request finished with the wrong number of tokens")
    if engine.blocks_in_use():
        raise AssertionError(f"{engine.blocks_in_use()} blocks left allocated")
    return times


def main(argv: list[str]) -> None:
    """Measure with --tokenizer (a bad path is one usage error) and print the step's host cost."""
    del argv
    tok = None
    if FLAGS.tokenizer:
        from model.tokenizer import load_tokenizer

        try:
            tok = load_tokenizer(FLAGS.tokenizer)
        except (OSError, ValueError) as e:
            raise app.UsageError(f"--tokenizer: {e}") from None
    times = measure(tok, FLAGS.trace_requests)
    print(f"host ms per engine step (>= 60 running, {len(times)} steps, tokenizer "
          f"{type(tok).__name__ if tok else 'none'}): p50 {statistics.median(times):.3f}, "
          f"mean {statistics.mean(times):.3f}; torch {torch.__version__}")


if __name__ == "__main__":
    app.run(main)
