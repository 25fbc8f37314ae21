"""Quality gates: every dataset the pipeline writes is validated by a Great Expectations suite.

- ``suites``: where the suite files are and how run facts become their parameters;
- ``validation``: one dataset against its suite, and the gate's verdict (critical fails it);
- ``findings``: failed expectations in the user's words;
- ``docs``: GX Data Docs of a run's reports;
- ``product_expectation``: the one custom expectation (a column equals a product of others);
- ``gate``: what the stage runner calls, in a validator process that imports GX early.

Importing this package is cheap: pandas and GX load with the modules that need them.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "validate": "validation", "GateResult": "validation", "required_parameters": "validation",
    "build_data_docs": "docs", "Finding": "findings", "SuiteError": "suites", "suite_path": "suites",
    "suites_dir": "suites",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
