"""Host cost of one engine step with the model stubbed out: schedule + update + outputs.

    python3 -m bench.host_cost [--tokenizer PATH]
    bazel run //bench:host_cost -- --tokenizer=/path/to/tokenizer.json

Not a benchmark of the model: the runner returns token 7 for every sampling request, so
what is timed is the Python the engine runs around each forward (the part a GPU step
cannot hide). 256 requests (prompts 100-600 ids, 64-1024 new tokens, seed 0) through a
continuous engine of 64 slots; prints p50/mean milliseconds over the steps with >= 60
running. Checks every request finished with its max_tokens and the pool is empty after
(a failed check raises: exit 1, nothing reported). Writes host_cost.{csv,json,png} and its
summary.json records under the CPU's results folder (the host is what is measured). There is
no hardware ceiling for host Python; the figure to hide it behind is the GPU's decode step
(bench.decode's ms_per_step: 5.4 ms for the Llama-3-8B shape at batch 1 on an H200).
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
    report(measure(tok, FLAGS.trace_requests), type(tok).__name__ if tok else "none")


def report(times: list[float], tokenizer: str) -> dict:
    """Print the p50/mean host ms and write host_cost.{csv,json,png} and summary.json; return the paths."""
    p50, mean = statistics.median(times), statistics.mean(times)
    print(f"host ms per engine step (>= 60 running, {len(times)} steps, tokenizer {tokenizer}): "
          f"p50 {p50:.3f}, mean {mean:.3f}; torch {torch.__version__}")
    out = common.results_dir("host_cost", device="cpu")
    rows = [{"step": i, "host_ms": t, "tokenizer": tokenizer} for i, t in enumerate(times)]
    summary = [{"name": f"host_cost/{tokenizer}/{stat}", "value": v, "unit": "ms"}
               for stat, v in (("p50", p50), ("mean", mean))]
    paths = common.write_results(out, "host_cost", rows, summary, device=common.device_name("cpu"))
    paths["png"] = common.plot_panels(out / "host_cost.png", [{
        "title": f"engine host ms per step (>= 60 running), tokenizer {tokenizer}", "xlabel": "step",
        "ylabel": "ms", "series": {"host": (list(range(len(times))), times)}, "hlines": {f"p50 {p50:.3f} ms": p50}}])
    return paths


if __name__ == "__main__":
    app.run(main)
