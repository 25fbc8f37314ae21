"""Errors a user can act on. Each renders as one paragraph: file, stage, column, what is wrong.

They cross process boundaries (a stage may run in another process), so each pickles with the
arguments it was made from.
"""

from __future__ import annotations

from pathlib import Path


class PipelineError(Exception):
    """Base for errors that end a run with exit code 2 and a message instead of a traceback."""

    exit_code = 2


class InputError(PipelineError):
    """The input cannot be read or does not have the shape of an invoice export."""

    def __init__(self, path: Path | str, stage: str, column: str | None, problem: str):
        self.path = str(path)
        self.stage = stage
        self.column = column
        self.problem = problem
        where = f"column {column}: " if column else ""
        super().__init__(
            f"Cannot use input {self.path} (stage {stage}): {where}{problem}. "
            "Nothing was marked complete; earlier runs are untouched."
        )

    def __reduce__(self):
        return (type(self), (self.path, self.stage, self.column, self.problem))


class ParameterError(PipelineError):
    """A run parameter is out of range or inconsistent with the data."""

    def __init__(self, stage: str, problem: str):
        self.stage = stage
        self.problem = problem
        super().__init__(f"Stage {stage}: {problem}.")

    def __reduce__(self):
        return (type(self), (self.stage, self.problem))


class UsageError(PipelineError):
    """A command was given something it cannot use (an unknown run id, a target it cannot write)."""

    def __init__(self, command: str, problem: str):
        self.command = command
        self.problem = problem
        super().__init__(f"segment {command}: {problem}" + ("" if problem.endswith(("?", ".", "!")) else "."))

    def __reduce__(self):
        return (type(self), (self.command, self.problem))


class DiskFullError(PipelineError):
    """A stage could not write its outputs because the disk (or the user's quota) is full."""

    def __init__(self, stage: str, where: Path | str, run_id: str, resumable: bool = True):
        self.stage, self.where, self.run_id, self.resumable = stage, str(where), run_id, resumable
        then = (f"once space is freed, `segment resume {run_id}` completes the run from this stage"
                if resumable else "once space is freed, run the same command again")
        super().__init__(
            f"Stage {stage} could not write to {self.where}: the disk is full (no space left on device). "
            f"Nothing half-written is trusted and earlier runs are untouched; {then}."
        )

    def __reduce__(self):
        return (type(self), (self.stage, self.where, self.run_id, self.resumable))


def disk_full(exc: OSError, stage: str, folder: Path | str, run_id: str, resumable: bool = True) -> OSError | DiskFullError:
    """The user's error for a full disk (or quota); any other OSError as it is."""
    import errno

    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(stage, folder, run_id, resumable)
    return exc
