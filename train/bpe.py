"""Byte-level BPE tokenizer training and saving (the library behind python3 -m train.tokenizer).

Byte-level BPE (GPT-2 style: every byte is a base symbol, so any text encodes with
no <unk>), trained with the `tokenizers` library. Ids 0 and 1 are the specials <s>
(BOS) and </s> (EOS); a template post-processor adds BOS when a caller asks for
special tokens (transformers' default), and model.tokenizer.load_tokenizer finds
both through tokenizer_config.json. Deterministic: the same texts and vocab size
give a byte-identical tokenizer.json.
"""

from __future__ import annotations

import json
import os

BOS, EOS = "<s>", "</s>"
SPECIAL_TOKENS = [BOS, EOS]  # ids 0 and 1


def train_tokenizer(texts: list[str], vocab_size: int = 8192, min_frequency: int = 2):
    """Return a trained byte-level BPE `tokenizers.Tokenizer` (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} "
                         f"(256 bytes + specials), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id), (EOS, eos_id)])
    return tok


def tokenizer_config(model_max_length: int = 1024) -> dict:
    """tokenizer_config.json: lets transformers' AutoTokenizer and load_tokenizer find BOS/EOS."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
    }


def save_tokenizer(tok, out_dir: str, model_max_length: int = 1024) -> str:
    """Write tokenizer.json and tokenizer_config.json into out_dir; return the json path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    tok.save(path, pretty=False)
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(tokenizer_config(model_max_length), f, indent=2, sort_keys=True)
        f.write("\n")
    return path


def copy_tokenizer(src_dir: str, dst_dir: str, model_max_length: int) -> None:
    """Copy tokenizer.json into a checkpoint folder, with a config naming its context length."""
    from tokenizers import Tokenizer

    save_tokenizer(Tokenizer.from_file(os.path.join(src_dir, "tokenizer.json")), dst_dir, model_max_length)
