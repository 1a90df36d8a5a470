"""CPU tests of the benchmark harness (timing, results files, correctness gate)."""


def exit_code(main, argv: list[str]):
    """Parse argv (argv[0]: the program name) into absl's FLAGS, run main([]), reset the flags.

    Returns the SystemExit code main raised, or what it returned (None for a plain return):
    how a benchmark's exit status is asserted without a subprocess.
    """
    from absl import flags

    flags.FLAGS(argv)
    try:
        return main([])
    except SystemExit as e:
        return e.code
    finally:
        flags.FLAGS.unparse_flags()
