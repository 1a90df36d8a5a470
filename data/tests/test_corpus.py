"""The shipped corpus: files intact and small, the split fixed, disjoint and as documented."""

from __future__ import annotations

import hashlib

import pytest

from data import corpus

SHA256 = {  # from ../shared/data/SOURCES.md: copied byte for byte
    "tinyshakespeare/input.txt": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    "wikitext-2/valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    "wikitext-2/test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
}


@pytest.mark.parametrize("rel", sorted(SHA256))
def test_files_are_the_published_ones_and_under_16_mib(rel):
    path = corpus.data_dir() / rel
    assert path.stat().st_size < 16 * 2**20
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[rel]


def test_split_is_fixed_and_disjoint():
    train, held, test = (corpus.load_split(s) for s in corpus.SPLITS)
    assert (len(train), len(held), len(test)) == (55, 7, 62)
    assert sum(map(len, train)) == 2_001_186 and sum(map(len, held)) == 234_398
    shakespeare = (corpus.data_dir() / corpus.SHAKESPEARE).read_text()
    assert corpus.shakespeare_cut(shakespeare) == 1_003_857
    assert train[0] + held[0] == shakespeare and train[0].endswith("\n\n")
    assert not set(train[1:]) & set(held[1:])
    assert all(a.startswith(" = ") and not a.startswith(" = = ") for a in train[1:] + held[1:] + test)


def test_unknown_split_is_one_line():
    with pytest.raises(corpus.CorpusError, match="unknown split 'dev'"):
        corpus.load_split("dev")


def test_spec_bench_prompts_are_the_published_ones():
    from data import spec_bench

    path = corpus.data_dir() / spec_bench.QUESTIONS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == (
        "4b6d33e79484f9841c487ee87d1cf6aa8c6066f61d5d482ff09e5a007fafdf04")  # ../shared/data/SOURCES.md
    groups = spec_bench.by_task()
    assert list(groups) == list(spec_bench.TASKS) and all(len(g) == 80 for g in groups.values())
    assert all(len(q.turns) == 2 for q in groups["multi_turn"])
