"""CPU tests of the benchmark harness (timing, results files, correctness gate)."""


def exit_code(run, opts):
    """run(opts): the SystemExit code it raised, or what it returned (None for a plain return).

    How a benchmark's exit status is asserted on an options object, without flags or a subprocess.
    """
    try:
        return run(opts)
    except SystemExit as e:
        return e.code
