"""CPU tests of the benchmark harness (timing, results files, correctness gate)."""


def exit_code(run, opts):
    """run(opts): the SystemExit code it raised, or what it returned (None for a plain return).

    How a benchmark's exit status is asserted on an options object, without flags or a subprocess.
    """
    try:
        return run(opts)
    except SystemExit as e:
        return e.code


def options_without_flags(module) -> list[str]:
    """The fields of module.Options with no absl flag of the same name: main fills Options from
    the flags one per field, so such a field would fail only when the binary runs."""
    import dataclasses

    from absl import flags

    return [f.name for f in dataclasses.fields(module.Options) if f.name not in flags.FLAGS]
