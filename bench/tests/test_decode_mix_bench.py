"""bench.decode_mix on a CPU (Triton's interpreter, tiny shapes): every variant checked and timed, the
heuristic's row present, and a decode kernel that skips each sequence's last token reported WRONG."""

import os

import pytest

from bench import decode_mix as dm

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="the CPU run needs Triton's interpreter (TRITON_INTERPRET=1)")


def _opts(**kw):
    base = dict(batches=(3,), splits=(1, 2), median=24, sigma=0.6, min_len=8, max_len=40, graph_width=4,
                page_size=16, iters=1, seed=0, device="cpu", plot=False)
    base.update(kw)
    return dm.Options(**base)


def test_rows_are_checked_and_timed():
    rows, failures, copy_gbps = dm.run(_opts(), log=lambda s: None)
    assert not failures and copy_gbps > 0
    names = {(r["width"], r["variant"]) for r in rows}
    assert names == {(w, v) for w in ("tight", "graph") for v in ("ours_auto", "ours_s1", "ours_s2", "sdpa_padded")}
    assert all(r["status"] == "ok" and r["p50_us"] > 0 and r["gbps"] > 0 for r in rows)
    assert dm.draw_lengths(3, _opts(), 3) == dm.draw_lengths(3, _opts(), 3)  # seeded
    assert all(8 <= n <= 40 for n in dm.draw_lengths(64, _opts(), 1))


def test_a_kernel_missing_the_last_token_is_wrong(monkeypatch):
    from kernels import flash_decode

    real = flash_decode.paged_flash_decode

    def short(q, k, v, table, seq_lens, *a, **kw):  # the planted fault: one token too few
        return real(q, k, v, table, seq_lens - 1, *a, **kw)

    monkeypatch.setattr(flash_decode, "paged_flash_decode", short)
    rows, failures, _ = dm.run(_opts(splits=(2,)), log=lambda s: None)
    bad = {r["variant"] for r in rows if r["status"].startswith("WRONG")}
    assert bad == {"ours_auto", "ours_s2"} and len(failures) == 4  # both widths; SDPA stays ok
