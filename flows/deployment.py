"""The monthly deployment: `segment serve` serves it; `segment deploy` registers it on a work pool."""

from __future__ import annotations

from pathlib import Path

from customer_segments.flows import defaults
from customer_segments.flows.pipeline import segmentation


def deployment_parameters(landing: str, artifacts: str) -> dict:
    """Scheduled runs read the landing path and segment up to the month of their scheduled start.

    Paths are made absolute here: a worker or a served process may run in another folder.
    """
    return {"input_path": str(Path(landing).resolve()), "artifacts": str(Path(artifacts).resolve()),
            "as_of": defaults.SCHEDULED}


def _schedule(cron: str, timezone: str):
    from prefect.schedules import Cron

    return Cron(cron, timezone=timezone)


def serve_monthly(cron: str = defaults.CRON, timezone: str = defaults.TIMEZONE,
                  landing: str = defaults.INPUT_PATH, artifacts: str = defaults.ARTIFACTS) -> None:
    segmentation.serve(
        name=defaults.DEPLOYMENT_NAME,
        schedule=_schedule(cron, timezone),
        parameters=deployment_parameters(landing, artifacts),
        tags=list(defaults.DEPLOYMENT_TAGS),
        description=defaults.DEPLOYMENT_DESCRIPTION,
    )


def deploy_monthly(work_pool: str, cron: str = defaults.CRON, timezone: str = defaults.TIMEZONE,
                   landing: str = defaults.INPUT_PATH, artifacts: str = defaults.ARTIFACTS) -> str:
    """Register the deployment on a work pool; its workers import the flow from this package.

    The entrypoint is the installed module (customer_segments.flows.pipeline:segmentation), so a
    worker in the same environment needs neither this folder nor an image.
    """
    from prefect.types.entrypoint import EntrypointType

    deployment_id = segmentation.deploy(
        name=defaults.DEPLOYMENT_NAME,
        work_pool_name=work_pool,
        schedule=_schedule(cron, timezone),
        parameters=deployment_parameters(landing, artifacts),
        tags=list(defaults.DEPLOYMENT_TAGS),
        description=defaults.DEPLOYMENT_DESCRIPTION,
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_next_steps=False,
    )
    return str(deployment_id)
