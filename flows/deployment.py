"""The monthly deployment: `segment serve` serves it; `segment deploy` registers it on a work pool."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from customer_segments.flows import settings
from customer_segments.flows.pipeline import segmentation
from customer_segments.tasks.runtime import parameters


def deployment_parameters(values: dict[str, Any]) -> dict[str, Any]:
    """The run parameters scheduled runs take: those that differ from the defaults, paths made absolute.

    Scheduled runs read the landing path (input_path) and segment up to the month of their
    scheduled start. Paths are made absolute here: a worker or a served process may run in
    another folder. Parameters left at their defaults are not written into the deployment, so
    they stay editable in the UI as defaults.
    """
    from customer_segments.tasks.runtime import postgres

    defaults = parameters.defaults().model_dump()
    chosen = {name: value for name, value in values.items() if value != defaults.get(name)}
    source = values["input_path"]  # a landing path, or a database URL (without password) read as it is
    return chosen | {"input_path": source if postgres.is_url(source) else str(Path(source).resolve()),
                     "artifacts": str(Path(values["artifacts"]).resolve()), "as_of": settings.SCHEDULED}


def _schedule(cron: str, timezone: str):
    from prefect.schedules import Cron

    return Cron(cron, timezone=timezone)


def serve_monthly(values: dict[str, Any], cron: str = settings.CRON, timezone: str = settings.TIMEZONE) -> None:
    segmentation.serve(
        name=settings.DEPLOYMENT_NAME,
        schedule=_schedule(cron, timezone),
        parameters=deployment_parameters(values),
        tags=list(settings.DEPLOYMENT_TAGS),
        description=settings.DEPLOYMENT_DESCRIPTION,
    )


def deploy_monthly(work_pool: str, values: dict[str, Any], cron: str = settings.CRON,
                   timezone: str = settings.TIMEZONE) -> str:
    """Register the deployment on a work pool; its workers import the flow from this package.

    The entrypoint is the installed module (customer_segments.flows.pipeline:segmentation), so a
    worker in the same environment needs neither this folder nor an image.
    """
    from prefect.types.entrypoint import EntrypointType

    deployment_id = segmentation.deploy(
        name=settings.DEPLOYMENT_NAME,
        work_pool_name=work_pool,
        schedule=_schedule(cron, timezone),
        parameters=deployment_parameters(values),
        tags=list(settings.DEPLOYMENT_TAGS),
        description=settings.DEPLOYMENT_DESCRIPTION,
        entrypoint_type=EntrypointType.MODULE_PATH,
        print_next_steps=False,
    )
    return str(deployment_id)
