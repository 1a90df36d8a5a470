"""The Spec-Bench prompts (data/spec_bench/question.jsonl, a byte-for-byte copy; see DATA_CARD.md).

480 questions in six task groups, as Spec-Bench reports them: multi-turn (the 80 MT-Bench
questions, categories writing ... humanities, two turns each), translation, summarization, qa,
math_reasoning and rag (80 single-turn questions each).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from data.corpus import CorpusError, data_dir

QUESTIONS = "spec_bench/question.jsonl"
TASKS = ("multi_turn", "translation", "summarization", "qa", "math_reasoning", "rag")
_MT_BENCH = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")


@dataclass(frozen=True)
class Question:
    question_id: int
    category: str  # Spec-Bench's own category (writing, ..., rag)
    task: str  # one of TASKS: the eight MT-Bench categories are "multi_turn"
    turns: tuple[str, ...]


def load_questions() -> list[Question]:
    """Every question in file order; CorpusError (one line) if the file is missing or malformed."""
    path = data_dir() / QUESTIONS
    if not path.is_file():
        raise CorpusError(f"Spec-Bench prompts not found: {path}; add //data:spec_bench to the target's data")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rec = json.loads(line)
            cat = rec["category"]
            out.append(Question(int(rec["question_id"]), cat, "multi_turn" if cat in _MT_BENCH else cat,
                                tuple(rec["turns"])))
        except (ValueError, KeyError, TypeError) as e:
            raise CorpusError(f"{path}:{n}: not a Spec-Bench question ({e})") from None
        if out[-1].task not in TASKS:
            raise CorpusError(f"{path}:{n}: unknown category {cat!r}")
    return out


def by_task(per_task: int | None = None) -> dict[str, list[Question]]:
    """Questions grouped by task (TASKS order), the first per_task of each (None: all)."""
    groups: dict[str, list[Question]] = {t: [] for t in TASKS}
    for q in load_questions():
        groups[q.task].append(q)
    return {t: qs[:per_task] if per_task is not None else qs for t, qs in groups.items()}


def prompt_ids(tokenizer, question: Question, max_tokens: int) -> list[int]:
    """The first turn as ids (BOS first when the tokenizer has one), at most max_tokens: a longer
    text keeps its end (a RAG question comes last; the lab models' context is 512 tokens)."""
    bos = [] if tokenizer.bos_id is None else [tokenizer.bos_id]
    ids = tokenizer.encode(question.turns[0], bos=False)
    return bos + ids[len(ids) - (max_tokens - len(bos)):] if len(ids) + len(bos) > max_tokens else bos + ids
