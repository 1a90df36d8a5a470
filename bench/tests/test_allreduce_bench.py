"""bench.allreduce on a CPU (gloo, 2 spawned ranks): every row checked and timed, files written;
the busbw formula is nccl-tests'; a wrong all-reduce is reported WRONG, not timed."""

import json

import torch

from bench import allreduce as ba

SMALL = ba.Options(device="cpu", world=2, min_size="1K", max_size="4K", size_step=4, decode_rows=("1",), hidden=64,
                   custom_max_bytes=1 << 20, warmup=1, iters=3)


def test_busbw_and_sizes():
    assert ba.bus_bandwidth(100.0, 2) == 100.0 and ba.bus_bandwidth(100.0, 8) == 175.0
    assert ba.sweep_sizes(ba.parse_size("1K"), ba.parse_size("1G"), 4)[-1] == 1 << 30
    assert len(ba.sweep_sizes(1024, 1 << 30, 4)) == 11


class _Ctx:
    rank, world, device = 0, 2, torch.device("cpu")


def test_check_rejects_a_rank_that_reads_only_itself():
    """The planted fault: an 'all-reduce' returning 2 x its own input must be WRONG."""
    assert ba.check_exact(lambda x: x + x, _Ctx(), 256).startswith("WRONG")
    want = sum(ba.rank_input(r, 256, "cpu", call=1).float() for r in range(2))
    assert ba.check_exact(lambda x: want.to(x.dtype), _Ctx(), 256) == "ok"


def test_cpu_run_writes_checked_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RESULTS_DIR", str(tmp_path))
    monkeypatch.setattr("sys.argv", ["allreduce"])
    from absl import flags
    flags.FLAGS(["allreduce"])  # parsed defaults; main reads Options from them
    for name, value in SMALL.__dict__.items():
        setattr(flags.FLAGS, name, list(value) if isinstance(value, tuple) else value)
    assert ba.main([]) == 0
    rows = json.loads((tmp_path / "allreduce.json").read_text())["rows"]
    assert [(r["kind"], r["bytes"]) for r in rows] == [("sweep", 1024), ("sweep", 4096), ("decode", 128)]
    for r in rows:
        assert r["status"] == "ok" and r["variant"] == "gloo" and r["time_us"] > 0, r
    assert (tmp_path / "allreduce.png").stat().st_size > 0
