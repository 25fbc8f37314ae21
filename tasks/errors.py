"""Errors a user can act on. Each renders as one paragraph: file, stage, column, what is wrong."""

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


class ParameterError(PipelineError):
    """A run parameter is out of range or inconsistent with the data."""

    def __init__(self, stage: str, problem: str):
        self.stage = stage
        super().__init__(f"Stage {stage}: {problem}.")
