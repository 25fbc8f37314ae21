"""GX Data Docs: a browsable site of a run's validation reports and the suites behind them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from customer_segments.tasks.runtime.quality import suites
from customer_segments.tasks.runtime.quality.offline_docs import copy_vendored, make_offline, site_files
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
    site = DocsSite(out_dir, suites_dir)
    site.add(report_items(reports), pages=False)
    return site.finish(all_pages=True)


class DocsSite:
    """A Data Docs site built a dataset at a time: each one's pages (its validation report and its
    suite) as soon as its report is final, the index page last.

    The validator renders the pages of a run's datasets while the run goes on (see
    gate.docs_pages), so that only the index is left for the run's end. A context of its own:
    the site shows exactly these reports, even when they were produced by other processes, and
    nothing from earlier builds.
    """

    def __init__(self, out_dir: Path, suites_dir: Path | None = None):
        from great_expectations.data_context import set_context

        self.state = gx_state()
        self.folder = suites_dir or suites.suites_dir()
        self.out_dir = Path(out_dir).resolve()
        self.added: dict[str, str] = {}  # dataset -> sha256 of the report its pages show
        self.offline: set[Path] = set()  # pages already made to work offline
        self.suites: set[str] = set()    # listing the context's suites loads every one of them again
        config = {
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(self.out_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "show_how_to_buttons": False,
        }
        with self.state.lock:
            self.context = self.state.gx.get_context(mode="ephemeral", project_config=project_config())
            try:
                self.context.add_data_docs_site(site_name=SITE_NAME, site_config=config)
                # One builder for the site's life: each one compiles GX's page templates anew.
                self.builder = self.context._init_site_builder_for_data_docs_site_creation(
                    site_name=SITE_NAME, site_config=config)
            finally:
                # get_context made the docs context the process's current one; give it back.
                set_context(self.state.context)

    def add(self, items: Sequence[tuple[str, dict]], pages: bool = True) -> list[str]:
        """Store these reports (and their suites) in the site; with ``pages``, render their pages
        now. A report already added with the same content is skipped. Returns the datasets added.

        A dataset whose report changed since its pages were rendered raises ValueError: its old
        page would stay in the site (the caller builds the site again from scratch).
        """
        import hashlib

        from great_expectations.core.expectation_validation_result import (
            expectationSuiteValidationResultSchema,
        )
        from great_expectations.core.run_identifier import RunIdentifier
        from great_expectations.data_context import set_context
        from great_expectations.data_context.types.resource_identifiers import (
            ExpectationSuiteIdentifier,
            ValidationResultIdentifier,
        )

        new: list[tuple[str, dict, str]] = []
        for dataset, report in items:
            digest = hashlib.sha256(json.dumps(report, sort_keys=True, default=str).encode()).hexdigest()
            if self.added.get(dataset) == digest:
                continue
            if dataset in self.added:
                raise ValueError(f"the report of {dataset} changed after its Data Docs pages were built")
            new.append((dataset, report, digest))
        if not new:
            return []
        with self.state.lock:
            set_context(self.context)
            try:
                identifiers: list[Any] = []
                for dataset, report, digest in new:
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
                    self.context.validation_results_store.set(key, result)
                    identifiers.append(key)
                    if (self.folder / f"{dataset}.json").is_file():
                        suite = self.state.suite(self.folder / f"{dataset}.json").suite
                        if suite.name not in self.suites:
                            # Adding binds a suite to the context and gives it ids: add a copy, so
                            # the cached suite used for validation stays unbound.
                            self.context.suites.add(copy_suite(suite))
                            self.suites.add(suite.name)
                            identifiers.append(ExpectationSuiteIdentifier(name=suite.name))
                    self.added[dataset] = digest
                if pages:
                    if not self.offline:  # the pages' own stylesheets and images, once
                        self.builder.target_store.copy_static_assets()
                    for section in self.builder.site_section_builders.values():
                        section.build(resource_identifiers=identifiers)
            finally:
                set_context(self.state.context)
        if pages:
            self._make_offline()
        return [dataset for dataset, _, _ in new]

    def _make_offline(self, everything: bool = False) -> None:
        todo = [p for p in site_files(self.out_dir) if p not in self.offline]
        make_offline(self.out_dir, None if everything else todo)
        self.offline.update(site_files(self.out_dir) if everything else todo)

    def finish(self, all_pages: bool = False) -> Path:
        """The index page (and, with ``all_pages``, every page); pages made to work offline.
        Returns the site's index.html."""
        from great_expectations.data_context import set_context

        with self.state.lock:
            set_context(self.context)
            try:
                if all_pages:
                    self.builder.build(build_index=True)
                else:
                    self.builder.target_store.copy_static_assets()
                    self.builder.site_index_builder.build(build_index=True)
            finally:
                set_context(self.state.context)
        index = self.out_dir / "index.html"
        if not index.is_file():
            raise RuntimeError(f"Data Docs build wrote no {index}")
        # GX's pages load their CSS/JS from CDNs; point them at vendored copies so the site works
        # offline (closed networks), and fail here if a page needs something that is not vendored.
        # The pages rendered ahead were done then; the vendored assets are copied now.
        if self.offline:
            copy_vendored(self.out_dir)
        self._make_offline(everything=not self.offline)
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
