"""Quality gates between stages: the bridge from the stage runner to the GX suites.

Great Expectations is imported only when a dataset with a suite is validated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"


@dataclass(frozen=True)
class GateOutcome:
    summary: dict[str, Any]      # what the manifest records: success, counts, seconds
    message: str | None          # one paragraph when a critical expectation failed
    report: dict[str, Any]       # GX's full validation result

    def report_bytes(self) -> bytes:
        return (json.dumps(self.report, indent=1, default=str) + "\n").encode("utf-8")


def has_suite(dataset: str) -> bool:
    return (EXPECTATIONS_DIR / f"{dataset}.json").exists()


def check(dataset: str, df: pd.DataFrame, facts: Mapping[str, Any]) -> GateOutcome | None:
    """Validate a stage output with expectations/<dataset>.json; None when it has no suite."""
    if not has_suite(dataset):
        return None
    from tasks import quality

    result = quality.validate(df, dataset, {k: v for k, v in facts.items() if v is not None})
    summary = {k: v for k, v in result.summary().items() if k != "findings"}
    return GateOutcome(summary=summary, message=result.error_message(), report=result.report)


def build_docs(validation_dir: Path) -> Path | None:
    """GX Data Docs for every report in a run's validation/ folder, into validation/docs/."""
    reports = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(validation_dir.glob("*.json"))}
    if not reports:
        return None
    from tasks import quality

    return quality.build_data_docs(reports, validation_dir / "docs")
