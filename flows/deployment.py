"""The monthly deployment: `segment serve` serves it; prefect.yaml declares it for `prefect deploy`."""

from __future__ import annotations

from flows.pipeline import SCHEDULED, segmentation

DEPLOYMENT_NAME = "monthly-segmentation"
DEFAULT_CRON = "0 6 1 * *"


def deployment_parameters(landing: str, artifacts: str) -> dict:
    """Scheduled runs read the landing path and segment up to the month of their scheduled start."""
    return {"input_path": landing, "artifacts": artifacts, "as_of": SCHEDULED}


def serve_monthly(cron: str = DEFAULT_CRON, timezone: str = "UTC", landing: str = "data/incoming",
                  artifacts: str = "artifacts") -> None:
    from prefect.schedules import Cron

    segmentation.serve(
        name=DEPLOYMENT_NAME,
        schedule=Cron(cron, timezone=timezone),
        parameters=deployment_parameters(landing, artifacts),
        tags=["segmentation", "monthly"],
        description="Monthly customer re-segmentation of the landing folder's invoice exports.",
    )
