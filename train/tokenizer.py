"""Train the lab's byte-level BPE tokenizer (about 8k ids) on the corpus train split.

    python3 -m train.tokenizer --out_dir data/tokenizer

Trains on data.corpus's train split only (held-out and WikiText-2 test never seen),
writes tokenizer.json + tokenizer_config.json, and prints tokens per char of each split.
See train/bpe.py for the tokenizer's definition.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from train.bpe import save_tokenizer, train_tokenizer

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", "data/tokenizer", "Folder for tokenizer.json + tokenizer_config.json "
                    "(relative to the repository root). Default: the tokenizer the repo ships.")
flags.DEFINE_integer("vocab_size", 8192, "Total ids, specials and the 256 byte symbols included. "
                     "Default 8192: small enough that the embedding stays a minor part of a ~12M model.")
flags.DEFINE_integer("min_frequency", 2, "A pair must occur this many times to be merged (default 2: "
                     "no merges for one-off strings).")


def main(argv):
    del argv
    from data import corpus
    from model.tokenizer import load_tokenizer

    out_dir = FLAGS.out_dir
    if not os.path.isabs(out_dir):
        out_dir = os.path.join(os.environ.get("BUILD_WORKSPACE_DIRECTORY", os.getcwd()), out_dir)
    tok = train_tokenizer(corpus.load_split("train"), FLAGS.vocab_size, FLAGS.min_frequency)
    path = save_tokenizer(tok, out_dir)
    loaded = load_tokenizer(path)
    print(f"wrote {path} ({os.path.getsize(path):,} bytes), vocab {loaded.vocab_size}, "
          f"bos {loaded.bos_id}, eos {loaded.eos_id}")
    for split in corpus.SPLITS:
        chars = len(corpus.split_text(split))
        n = len(corpus.token_stream(loaded, split))
        print(f"{split:15s} {chars:>10,} chars {n:>9,} tokens  {n / chars:.4f} tokens/char")
    return 0


if __name__ == "__main__":
    sys.exit(app.run(main))
