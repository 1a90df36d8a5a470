"""CPU tests of the benchmark harness (timing, results files, correctness gate)."""
