"""GX Data Docs: a browsable site of a run's validation reports and the suites behind them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from customer_segments.tasks.runtime.quality import suites
from customer_segments.tasks.runtime.quality.offline_docs import make_offline
from customer_segments.tasks.runtime.quality.validation import GateResult, copy_suite, gx_state, project_config

SITE_NAME = "quality"


def build_data_docs(
    reports: Mapping[str, dict] | Sequence[dict | GateResult],
    out_dir: Path,
    suites_dir: Path | None = None,
) -> Path:
    """Render validation reports as a GX Data Docs site in ``out_dir``; return its index.html.

    ``reports`` maps dataset name to report (``GateResult.report``) or is a list of reports or
    GateResults. The suites of those datasets are rendered too.
    """
    state = gx_state()
    folder = suites_dir or suites.suites_dir()
    out_dir = Path(out_dir).resolve()
    items = report_items(reports)

    from great_expectations.core.expectation_validation_result import (
        expectationSuiteValidationResultSchema,
    )
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context import set_context
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    with state.lock:
        # A context of its own: the site shows exactly these reports, even when they were
        # produced by other processes, and nothing from earlier builds.
        context = state.gx.get_context(mode="ephemeral", project_config=project_config())
        try:
            added: set[str] = set()  # listing the context's suites loads every one of them again
            for dataset, report in items:
                result = expectationSuiteValidationResultSchema.load(
                    {**report, "suite_name": report.get("suite_name") or dataset}
                )
                run = (report.get("meta") or {}).get("run_id") or {}
                run_id = RunIdentifier(
                    run_name=run.get("run_name") or dataset,
                    run_time=run.get("run_time") or datetime.now(timezone.utc),
                )
                key = ValidationResultIdentifier(
                    expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
                    run_id=run_id,
                    batch_identifier=report.get("batch_id") or dataset,
                )
                context.validation_results_store.set(key, result)
                if (folder / f"{dataset}.json").is_file():
                    suite = state.suite(folder / f"{dataset}.json").suite
                    if suite.name not in added:
                        # Adding binds a suite to the context and gives it ids: add a copy, so
                        # the cached suite used for validation stays unbound.
                        context.suites.add(copy_suite(suite))
                        added.add(suite.name)

            context.add_data_docs_site(
                site_name=SITE_NAME,
                site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {
                        "class_name": "TupleFilesystemStoreBackend",
                        "base_directory": str(out_dir),
                    },
                    "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                    "show_how_to_buttons": False,
                },
            )
            context.build_data_docs(site_names=[SITE_NAME])
        finally:
            # get_context made the docs context the process's current one; give it back.
            set_context(state.context)
    index = out_dir / "index.html"
    if not index.is_file():
        raise RuntimeError(f"Data Docs build wrote no {index}")
    # GX's pages load their CSS/JS from CDNs; point them at vendored copies so the site works
    # offline (closed networks), and fail here if a page needs something that is not vendored.
    make_offline(out_dir)
    return index


def report_items(reports: Mapping[str, dict] | Sequence[dict | GateResult]) -> list[tuple[str, dict]]:
    if isinstance(reports, Mapping):
        pairs = [(str(name), report.report if isinstance(report, GateResult) else report) for name, report in reports.items()]
    else:
        pairs = []
        for item in reports:
            report = item.report if isinstance(item, GateResult) else item
            name = (report.get("meta") or {}).get("dataset") or report.get("suite_name")
            pairs.append((str(name), report))
    for name, report in pairs:
        if not isinstance(report, Mapping) or "results" not in report:
            raise TypeError(f"Report for {name} is not a GX validation result (no 'results')")
    return pairs
