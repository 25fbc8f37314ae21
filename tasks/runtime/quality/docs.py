"""GX Data Docs: a browsable site of a run's validation reports and the suites behind them.

The site is built once a run's last gate has passed, on the run's tail. So that the tail is short,
the validator renders each report's pages as soon as it has validated the dataset, while the run
goes on (`render_ahead`, in a thread of its own that waits whenever a gate is validating); the
final build then copies those pages, renders only the reports it has no pages for (reused from
the cache, or validated in another process) and writes the index.
"""

from __future__ import annotations

import hashlib
import os
import queue
import shutil
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from customer_segments.tasks.runtime.quality import suites
from customer_segments.tasks.runtime.quality.offline_docs import SITE_FILES, make_offline, offline_pages
from customer_segments.tasks.runtime.quality.validation import GateResult, copy_suite, gx_state, project_config

SITE_NAME = "quality"


def build_data_docs(
    reports: Mapping[str, dict] | Sequence[dict | GateResult],
    out_dir: Path,
    suites_dir: Path | None = None,
    rendered: Mapping[str, Mapping[str, Path]] | None = None,
) -> Path:
    """Render validation reports as a GX Data Docs site in ``out_dir``; return its index.html.

    ``reports`` maps dataset name to report (``GateResult.report``) or is a list of reports or
    GateResults. The suites of those datasets are rendered too. ``rendered`` holds pages made
    ahead for some datasets ({dataset: {path in the site: file}}): they are copied, not rendered.
    """
    state = gx_state()
    folder = suites_dir or suites.suites_dir()
    out_dir = Path(out_dir).resolve()
    items = report_items(reports)
    rendered = rendered or {}
    _reuse_compiled_templates()

    from great_expectations.data_context import set_context
    from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

    # The index links the pages it finds in the site: those made ahead are there first.
    for pages in rendered.values():
        for relative, staged in pages.items():
            (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(staged, out_dir / relative)
    with state.lock:
        # A context of its own: the site shows exactly these reports, even when they were
        # produced by other processes, and nothing from earlier builds.
        context = state.gx.get_context(mode="ephemeral", project_config=project_config())
        try:
            keys = _add_reports(context, items, folder)
            _add_site(context, out_dir)
            todo = [key for dataset, key in keys.items() if dataset not in rendered]
            todo += [ExpectationSuiteIdentifier(name=name) for name in _suite_names(items, folder, skip=rendered)]
            # No identifiers would mean every page: one that names nothing leaves only the index.
            context.build_data_docs(site_names=[SITE_NAME],
                                    resource_identifiers=todo or [ExpectationSuiteIdentifier(name=_NOTHING)])
        finally:
            # get_context made the docs context the process's current one; give it back.
            set_context(state.context)
    index = out_dir / "index.html"
    if not index.is_file():
        raise RuntimeError(f"Data Docs build wrote no {index}")
    # GX's pages load their CSS/JS from CDNs; point them at vendored copies so the site works
    # offline (closed networks), and fail here if a page needs something that is not vendored.
    make_offline(out_dir, done={relative for pages in rendered.values() for relative in pages})
    return index


_NOTHING = "(none)"


def _add_reports(context, items: list[tuple[str, dict]], folder: Path, added: set[str] | None = None) -> dict[str, object]:
    """Store the reports and their suites in a docs context; the reports' keys by dataset."""
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    state = gx_state()
    keys = {}
    added = set() if added is None else added  # listing the context's suites loads every one of them again
    for dataset, report in items:
        result = expectationSuiteValidationResultSchema.load({**report, "suite_name": report.get("suite_name") or dataset})
        run = (report.get("meta") or {}).get("run_id") or {}
        run_id = RunIdentifier(run_name=run.get("run_name") or dataset,
                               run_time=run.get("run_time") or datetime.now(timezone.utc))
        key = ValidationResultIdentifier(expectation_suite_identifier=ExpectationSuiteIdentifier(name=result.suite_name),
                                         run_id=run_id, batch_identifier=report.get("batch_id") or dataset)
        context.validation_results_store.set(key, result)
        keys[dataset] = key
        if (folder / f"{dataset}.json").is_file():
            suite = state.suite(folder / f"{dataset}.json").suite
            if suite.name not in added:
                # Adding binds a suite to the context and gives it ids: add a copy, so the cached
                # suite used for validation stays unbound.
                context.suites.add(copy_suite(suite))
                added.add(suite.name)
    return keys


def _suite_names(items: list[tuple[str, dict]], folder: Path, skip: Mapping[str, object] = {}) -> list[str]:
    state = gx_state()
    return sorted({state.suite(folder / f"{dataset}.json").suite.name for dataset, _ in items
                   if dataset not in skip and (folder / f"{dataset}.json").is_file()})


def _add_site(context, out_dir: Path) -> None:
    context.add_data_docs_site(
        site_name=SITE_NAME,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(out_dir)},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            "show_how_to_buttons": False,
        },
    )


def _reuse_compiled_templates() -> None:
    """Compile GX's page templates once per process, not once per page view (once).

    Each of GX's Jinja views builds an Environment of its own, which compiles the ~50 templates a
    site uses again: 0.2 s of every docs build. Jinja's bytecode cache, shared by those
    Environments, keeps the compiled code (checked against each template's source).
    """
    from great_expectations.render.view.view import DefaultJinjaView
    from jinja2.bccache import BytecodeCache

    if getattr(DefaultJinjaView.__init__, "shares_bytecode", False):
        return

    class InMemory(BytecodeCache):
        def __init__(self) -> None:
            self.code: dict[str, bytes] = {}

        def load_bytecode(self, bucket) -> None:
            if bucket.key in self.code:
                bucket.bytecode_from_string(self.code[bucket.key])

        def dump_bytecode(self, bucket) -> None:
            self.code[bucket.key] = bucket.bytecode_to_string()

    cache, init = InMemory(), DefaultJinjaView.__init__

    def __init__(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        self.env.bytecode_cache = cache

    __init__.shares_bytecode = True
    DefaultJinjaView.__init__ = __init__


# --- pages rendered ahead, in the validator ---------------------------------------------------------


class _Ahead:
    """Pages of validated reports, rendered while the run goes on, by the sha256 of the report."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pages: dict[str, dict[str, Path]] = {}
        self.todo: queue.Queue = queue.Queue()
        self.dir: Path | None = None
        self.thread: threading.Thread | None = None
        self.context = None              # one docs context for every page rendered ahead
        self.suites: dict[str, tuple[int, int]] = {}  # the suites in it, by the file's stamp

    def submit(self, report: bytes, suites_dir: Path | None) -> None:
        with self.lock:
            if self.thread is None:
                # Removed when the process ends (the validator ends when its run's command does).
                self.folder = tempfile.TemporaryDirectory(prefix="segment-docs-")
                self.dir = Path(self.folder.name)
                self.thread = threading.Thread(target=self._loop, name="docs-ahead", daemon=True)
                self.thread.start()
        self.todo.put((report, suites_dir))

    def _loop(self) -> None:
        while True:
            report, suites_dir = self.todo.get()
            try:
                self._render(report, suites_dir)
            except Exception:  # the final build renders it, and says what is wrong if it still is
                pass
            finally:
                self.todo.task_done()

    def _render(self, data: bytes, suites_dir: Path | None) -> None:
        import json

        from great_expectations.data_context import set_context
        from great_expectations.data_context.store.html_site_store import HtmlSiteStore
        from great_expectations.data_context.types.resource_identifiers import ExpectationSuiteIdentifier

        digest = hashlib.sha256(data).hexdigest()
        report = json.loads(data)
        dataset = (report.get("meta") or {}).get("dataset") or report.get("suite_name")
        folder = suites_dir or suites.suites_dir()
        site = self.dir / digest
        state = gx_state()
        _reuse_compiled_templates()
        with state.lock:
            if self.context is None:
                self.context = state.gx.get_context(mode="ephemeral", project_config=project_config())
            else:
                set_context(self.context)
            copy = HtmlSiteStore.copy_static_assets
            try:
                suite_file = folder / f"{dataset}.json"
                loaded = state.suite(suite_file) if suite_file.is_file() else None
                if loaded is not None and self.suites.get(loaded.suite.name, loaded.stamp) != loaded.stamp:
                    self.context.suites.delete(loaded.suite.name)  # edited since: added again below
                    del self.suites[loaded.suite.name]
                keys = _add_reports(self.context, [(dataset, report)], folder, set(self.suites))
                if loaded is not None:
                    self.suites[loaded.suite.name] = loaded.stamp
                self.context.add_data_docs_site(site_name=digest, site_config={
                    "class_name": "SiteBuilder",
                    "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(site)},
                    "show_how_to_buttons": False})
                # The final build copies the site's static files once; here they are not needed.
                HtmlSiteStore.copy_static_assets = lambda *args, **kwargs: None
                ids = [keys[dataset]] + [ExpectationSuiteIdentifier(name=n) for n in _suite_names([(dataset, report)], folder)]
                self.context.build_data_docs(site_names=[digest], resource_identifiers=ids, build_index=False)
                self.context.delete_data_docs_site(digest)
                self.context.validation_results_store.remove_key(keys[dataset])
            finally:
                HtmlSiteStore.copy_static_assets = copy
                set_context(state.context)
        pages = {p.relative_to(site).as_posix(): p for p in site.rglob("*.html")}
        _link_site_files(site)  # what the pages' rewritten links point at (GX's logo), as in the final site
        offline_pages(site, list(pages.values()))
        with self.lock:
            self.pages[digest] = pages

    def rendered(self, reports: Mapping[str, bytes]) -> dict[str, dict[str, Path]]:
        """The pages made ahead for these reports ({dataset: report bytes}), once the queue is done."""
        if self.thread is not None:
            self.todo.join()
        with self.lock:
            found = {dataset: self.pages.get(hashlib.sha256(data).hexdigest()) for dataset, data in reports.items()}
        return {dataset: pages for dataset, pages in found.items() if pages}

    def forget(self, reports: Mapping[str, bytes]) -> None:
        for data in reports.values():
            digest = hashlib.sha256(data).hexdigest()
            with self.lock:
                found = self.pages.pop(digest, None)
            if found is not None:
                shutil.rmtree(self.dir / digest, ignore_errors=True)


def _link_site_files(site: Path) -> None:
    import great_expectations

    static = Path(great_expectations.__file__).parent / "render" / "view"
    for relative in set(SITE_FILES.values()):
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        if not (site / relative).exists():
            os.link(static / relative, site / relative)


_AHEAD = _Ahead()


def render_ahead(report: bytes, suites_dir: Path | None = None) -> None:
    """Render a validated report's pages in the background, for the run's Data Docs build."""
    _AHEAD.submit(report, suites_dir)


def rendered_ahead(reports: Mapping[str, bytes]) -> dict[str, dict[str, Path]]:
    return _AHEAD.rendered(reports)


def forget_ahead(reports: Mapping[str, bytes]) -> None:
    """Drop the pages made ahead for these reports (their site is built)."""
    _AHEAD.forget(reports)


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
