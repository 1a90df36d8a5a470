"""stop_string_hit (windowed decode) fires at exactly the token where a whole-output decode would.

Real tokenizers (Llama 2 SentencePiece with byte fallback, Llama 3 tiktoken byte-level) on
text with accents, CJK, RTL, emoji/ZWJ sequences and whitespace runs, so windows start in
the middle of multi-byte characters; stop strings are fresh random substrings of the text.
"""

import random
from pathlib import Path

import pytest

from model.tokenizer import load_tokenizer
from decoding.stopping import stop_string_hit

TOKENIZERS = Path(__file__).absolute().parents[2] / "third_party/tokenizers"
TEXT = ("Grüße, naïve café — 日本語のテキスト, Привет, مرحبا, 👋🏽 👨‍👩‍👧 ok!\n\ttabs  and  spaces. "
        "First Citizen: Before we proceed any further, hear me speak. 海の向こうに 🌊🌊 "
        "All: Speak, speak. ☃ ∑ x² ≠ y³ «quoted» ... end") * 2


@pytest.mark.parametrize("name", ["llama2", "llama3"])
def test_windowed_stop_matches_full_decode(name):
    tok = load_tokenizer(TOKENIZERS / name)
    ids = tok.encode(TEXT, bos=False)
    full = tok.decode(ids)
    prefix_texts = [tok.decode(ids[:i + 1]) for i in range(len(ids))]
    rng = random.Random(0)
    cases = [[full[a:a + n]] for n in (1, 2, 3, 5, 9, 17) for a in rng.sample(range(len(full) - n), 12)]
    cases += [["\u2603 never", "zzz-not-there"], [full[-7:], full[40:44]]]
    for stops in cases:
        want = next((i for i, t in enumerate(prefix_texts) if any(s in t for s in stops)), None)
        got = next((i for i in range(len(ids)) if stop_string_hit(tok.decode, ids[:i + 1], stops)), None)
        assert got == want, f"{name}: stops {stops!r} fire at token {got}, a full decode at {want}"
