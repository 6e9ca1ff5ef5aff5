"""In-process runs without Dagster's output capture (issue 22): `lens-eval run --in-process`
and the benchmarks execute the weekly job in one process; Dagster's `execute_in_process` keeps
every step's output alive until the run ends, so the process held every table at once. The
helper it now uses frees a step's output once the steps that read it have run."""

from __future__ import annotations

import gc
import weakref

import dagster as dg

from resources.launch import execute_in_process_uncaptured


class Table:
    """Stands for a step's DataFrame (weak-referenceable)."""

    def __init__(self, n: int):
        self.rows = list(range(n))


def _job(refs: list, seen: list):
    class MemIO(dg.IOManager):
        def handle_output(self, context, obj):
            """Stores nothing: only Dagster's own capture could keep `obj` alive."""

        def load_input(self, context):
            return Table(1)

    @dg.op(out=dg.Out(io_manager_key="mem"))
    def produce():
        t = Table(10_000)
        refs.append(weakref.ref(t))
        return t

    @dg.op(ins={"t": dg.In(input_manager_key="mem")})
    def consume(t):
        gc.collect()
        seen.append(refs[0]() is not None)  # still alive while the next step runs?
        return len(t.rows)

    @dg.job(resource_defs={"mem": dg.IOManagerDefinition.hardcoded_io_manager(MemIO())})
    def tiny():
        consume(produce())

    return tiny


def test_outputs_are_not_kept_by_the_result():
    refs: list = []
    seen: list = []
    with dg.instance_for_test() as instance:
        res = execute_in_process_uncaptured(_job(refs, seen), instance=instance)
        assert res.success
        gc.collect()
        assert seen == [False]  # freed before the next step ran
        assert refs[0]() is None


def test_dagster_execute_in_process_keeps_them():
    """The behaviour the helper avoids (fails if a Dagster release stops capturing: then the
    helper can go)."""
    refs: list = []
    seen: list = []
    with dg.instance_for_test() as instance:
        res = _job(refs, seen).execute_in_process(instance=instance)
        assert res.success
        gc.collect()
        assert seen == [True] and refs[0]() is not None
