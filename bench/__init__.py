"""Benchmarks: one binary per question, each checking what it times before timing it.

Every binary prints a table, writes CSV/JSON, PNG plots and a `summary.json` under
`bench/results/<device>-<date>/` (see `bench.common.results_dir`), and names the
roofline it compares against (copy bandwidth, matmul TFLOP/s, PCIe).
"""
