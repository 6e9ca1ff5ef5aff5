"""Progress lines for runs started from a terminal (`lens-eval run`, `make demo`), in place of
Dagster's DEBUG event stream: one line per finished step with its time, one per failed step with
the innermost error only, one per failed check with its description, and the warnings the
assets log. A refused run (a step failed with one of `preflight.REFUSAL_ERRORS`: settings,
credentials, a held partition) prints nothing more: the caller prints its one line (issue 18). A Dagster logger, opted into through run config:

    job.with_logger_defs({**job.loggers, PROGRESS_LOGGER: progress_logger})
       .execute_in_process(run_config=progress_run_config(total_steps), ...)
"""

from __future__ import annotations

import logging
import sys
import time

import dagster as dg

from lens_core.collect.preflight import REFUSAL_ERRORS

PROGRESS_LOGGER = "lens_progress"
MAX_LINE = 160


def _one_line(text: str, limit: int = MAX_LINE) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def root_message(err) -> str:
    """The innermost cause of a step failure: the user's error, not Dagster's wrapper."""
    while getattr(err, "cause", None) is not None:
        err = err.cause
    return (getattr(err, "message", None) or str(err)).strip()


def root_class(err) -> str | None:
    """The class name of the innermost cause of a step failure."""
    while getattr(err, "cause", None) is not None:
        err = err.cause
    return getattr(err, "cls_name", None)


class ProgressPrinter:
    """Turns a run's events into progress lines (from a logger, or from the event log of a run
    launched elsewhere: `handle_entry`)."""

    def __init__(self, total: int = 0, label: str = "", stream=None) -> None:
        self.total = total
        self.label = label
        self.stream = stream or sys.stdout
        self.done = 0
        self.t0 = time.monotonic()
        self.refused = False  # a step failed with a refusal: the rest is silent
        self._mapped: set[str] = set()  # mapped ops (`op[key]`) seen: the plan counts each once

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _count(self, step: str = "") -> str:
        # a mapped op (one step per system, issue 22) is one step of the plan until it runs: its
        # second and later mapping keys add to the total
        if "[" in step and self.total:
            op = step.split("[", 1)[0]
            if op in self._mapped:
                self.total += 1
            self._mapped.add(op)
        self.done += 1
        width = len(str(self.total)) if self.total else 0
        return f"[{self.done:>{width}}/{self.total}]" if self.total else f"[{self.done}]"

    def handle_entry(self, entry) -> None:
        """One EventLogEntry of the instance's event log."""
        self.handle(entry.dagster_event, entry.step_key or "", entry.level, entry.user_message)

    def handle(self, ev, step: str, levelno: int, message: str) -> None:
        label = f"{self.label} " if self.label else ""
        if self.refused:
            return
        if ev is None:  # a line an asset logged (context.log.*)
            msg = str(message or "")
            if levelno >= logging.WARNING:
                self._print(f"      ! {step}: {_one_line(msg)}")
            elif levelno >= logging.INFO and step and msg.startswith("["):
                # a step's own counter, e.g. raw_runs' "[3/9] lens_v22: ..."
                self._print(f"      · {step}: {_one_line(msg)}")
            return
        kind = ev.event_type_value
        data = ev.event_specific_data
        if kind == "STEP_SUCCESS":
            secs = (getattr(data, "duration_ms", None) or 0) / 1000
            self._print(f"  {label}{self._count(step)} ok    {step} ({secs:.1f}s)")
        elif kind == "STEP_FAILURE":
            if root_class(data.error) in REFUSAL_ERRORS:
                self.refused = True  # not a crash of this step: the caller says why, in one line
                return
            msg = root_message(data.error)
            # a blocking check that failed is a result (the check line above says why), not a crash
            state = "red " if "blocking asset check" in msg else "FAIL"
            self._print(f"  {label}{self._count(step)} {state}  {step}: {_one_line(msg)}")
        elif kind == "STEP_SKIPPED":
            self._print(f"  {label}{self._count(step)} skip  {step}")
        elif kind == "ASSET_CHECK_EVALUATION" and not data.passed:
            sev = data.severity.value if data.severity is not None else "ERROR"
            what = data.description or "failed"
            self._print(f"      {sev:<5} check {data.check_name}: {_one_line(what, MAX_LINE - 20)}")
        elif kind in ("RUN_SUCCESS", "RUN_FAILURE"):
            state = "finished" if kind == "RUN_SUCCESS" else "finished with a failed step"
            self._print(f"  {label}run {state} in {time.monotonic() - self.t0:.1f}s")


class ProgressHandler(logging.Handler):
    def __init__(self, total: int = 0, label: str = "", stream=None) -> None:
        super().__init__(level=logging.DEBUG)
        self.printer = ProgressPrinter(total, label, stream)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            meta = getattr(record, "dagster_meta", None) or {}
            self.printer.handle(
                meta.get("dagster_event"),
                meta.get("step_key") or "",
                record.levelno,
                str(meta.get("orig_message") or record.getMessage()),
            )
        except Exception:  # noqa: BLE001 - a progress line must never fail a run
            self.handleError(record)


@dg.logger(
    config_schema={
        "total": dg.Field(int, default_value=0, description="steps in the run (for [n/total])"),
        "label": dg.Field(str, default_value="", description="a prefix for every line"),
    },
    description="Compact progress lines on stdout for terminal runs (lens-eval run, make demo).",
)
def progress_logger(init_context) -> logging.Logger:
    lg = logging.Logger(PROGRESS_LOGGER, level=logging.DEBUG)  # step events are DEBUG records
    lg.addHandler(ProgressHandler(init_context.logger_config["total"], init_context.logger_config["label"]))
    return lg


def progress_run_config(total: int = 0, label: str = "") -> dict:
    """Run config that routes the run's events to the progress logger only."""
    return {"loggers": {PROGRESS_LOGGER: {"config": {"total": int(total), "label": label}}}}


def with_progress(job: dg.JobDefinition) -> dg.JobDefinition:
    """The job with the progress logger among its loggers (selected by `progress_run_config`)."""
    return job.with_logger_defs({**job.loggers, PROGRESS_LOGGER: progress_logger})
