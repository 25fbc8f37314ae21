"""Progress of a run on a terminal: a line per stage as it ends, and a live line of what runs.

    ingest           done in 9.6 s · gate passed                        0:11
    clean            done in 7.1 s · gate passed (1 warning)            0:19
    rfm              cached                                             0:19
  ▸ running: orders, best_sellers                                       0:21

The stage lines stay; the live line below them is rewritten twice a second with the stages
running and the time since the command started. It goes to standard error, and only when that
is a terminal and the command was not asked for --json: piped or scripted, the output is what it
always was. The run ledger tells it of every change (`run_folders.WATCHERS`).
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from contextlib import contextmanager
from typing import TextIO

from customer_segments.tasks.runtime import run_folders
from customer_segments.tasks.runtime.manifest import Manifest, StageRecord

TICK = 0.5
WIDTH = 78            # at most; narrower on a narrower terminal
CLEAR = "\r\x1b[K"


def wanted(json_out: bool, stream: TextIO | None = None) -> bool:
    """Shown on a terminal only, and never with --json."""
    stream = stream or sys.stderr
    return not json_out and bool(getattr(stream, "isatty", lambda: False)())


def clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def gate_words(record: StageRecord) -> str:
    """What the stage's quality gates said, in a few words."""
    gates = [g for g in record.gates.values() if g]
    if not gates:
        return ""
    failed = sum(not g.get("success", True) for g in gates)
    warnings = sum(len(g.get("warnings") or []) for g in gates)
    if failed:
        return f"gate failed ({failed} of {len(gates)})" if len(gates) > 1 else "gate failed"
    words = "gates passed" if len(gates) > 1 else "gate passed"
    return words + (f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else "")


def stage_words(record: StageRecord) -> str:
    if record.status == "cached":
        what = "cached"
    elif record.status == "completed":
        what = f"done in {record.seconds:.1f} s" if record.seconds is not None else "done"
    elif record.status == "skipped":
        return f"skipped: {record.reason}"
    else:
        what = "failed" if record.status == "failed" else "stopped"
    gates = gate_words(record)
    return f"{what} · {gates}" if gates and record.status != "cached" else what


class Progress:
    """Watches a run ledger and draws on a terminal stream."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.started = time.monotonic()
        self.running: list[str] = []
        self.gating: set[str] = set()  # computed, their gates validating
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.ticker = threading.Thread(target=self._tick, name="progress", daemon=True)

    # -- ledger events -------------------------------------------------------------------------

    def __call__(self, event: str, stage: str | None, manifest: Manifest) -> None:
        with self.lock:
            if event == "started" and stage not in self.running:
                self.running.append(stage)
            elif event == "computed" and stage in self.running:
                self.gating.add(stage)
            elif event in ("finished", "failed", "skipped", "discarded") and stage is not None:
                if stage in self.running:
                    self.running.remove(stage)
                self.gating.discard(stage)
                record = manifest.stages.get(stage)
                if event == "discarded":
                    self._line(f"  {stage:<16} discarded: computed from data that failed a gate")
                elif record is not None:
                    self._line(f"  {stage:<16} {stage_words(record)}")
            elif event == "opened" and manifest.as_of:
                self._line(f"Run {manifest.run_id}, as-of {manifest.as_of}")
            elif event == "ended":
                self.running.clear()
            self._status()

    # -- drawing -------------------------------------------------------------------------------

    def _width(self) -> int:
        return max(40, min(WIDTH, shutil.get_terminal_size((WIDTH + 1, 24)).columns - 1))

    def _line(self, text: str) -> None:
        """A permanent line, with the elapsed time at the right (the live line is redrawn below it)."""
        elapsed = clock(time.monotonic() - self.started)
        width = self._width()
        body = text[: width - len(elapsed) - 1]
        self.stream.write(f"{CLEAR}{body}{' ' * (width - len(body) - len(elapsed))}{elapsed}\n")

    def _status(self) -> None:
        elapsed = clock(time.monotonic() - self.started)
        if not self.running:
            self.stream.write(CLEAR)
        else:
            width = self._width()
            body = ("▸ running: " + ", ".join(f"{s} (gate)" if s in self.gating else s for s in self.running))[: width - len(elapsed) - 1]
            self.stream.write(f"{CLEAR}{body}{' ' * (width - len(body) - len(elapsed))}{elapsed}")
        self.stream.flush()

    def _tick(self) -> None:
        while not self.stop.wait(TICK):
            with self.lock:
                if self.running:
                    self._status()

    def close(self) -> None:
        self.stop.set()
        with self.lock:
            self.running.clear()
            self.stream.write(CLEAR)
            self.stream.flush()


@contextmanager
def shown(json_out: bool, stream: TextIO | None = None):
    """Show the progress of the runs made inside the block, when `wanted`."""
    stream = stream or sys.stderr
    if not wanted(json_out, stream):
        yield None
        return
    progress = Progress(stream)
    run_folders.WATCHERS.append(progress)
    progress.ticker.start()
    try:
        yield progress
    finally:
        progress.close()
        run_folders.WATCHERS.remove(progress)
