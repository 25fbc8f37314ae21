"""The run's report.html: real run folders made by the `segment` command, opened in headless Chromium.

The runs start the product's own local Prefect server in a folder of this session
(SEGMENT_SERVER_HOME) through the command line, and stop it at the end; the browser is the
session's one headless Chromium (conftest.py). Screenshots go to artifacts/test-screenshots/ for a
person to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from support import BIN, REAL_PARQUET, REPO, SAMPLE, real

from customer_segments.flows.report import (
    REPORT_FILE, build_report, fmt_money, fmt_pct, render_report, report_context,
)
from customer_segments.tasks import catalogue
from customer_segments.tasks.runtime.manifest import InputInfo, Manifest, StageRecord

SEGMENT = BIN / "segment"
SCREENSHOTS = REPO / "artifacts" / "test-screenshots"
PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}

ALL_SECTIONS = ["run", "segments", "choosing-k", "best-sellers", "basket-rules", "rfm", "value", "propensity",
                "migration", "data-quality"]
# Every stage a user can switch off, by its flag.
SWITCHES = [stage.switch_flag for stage in catalogue.STAGES if stage.switchable]
METHODS_OFF_SECTIONS = ["run", "segments", "choosing-k", "best-sellers", "data-quality"]
MAX_BYTES = 5 * 1024 * 1024

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


# --- run folders made by the real command line ----------------------------------------------------

@pytest.fixture(scope="session")
def server_home(tmp_path_factory):
    """The local Prefect server's folder for this session; the server is stopped at the end."""
    from customer_segments.flows.server import LocalServer

    home = tmp_path_factory.mktemp("prefect-server")
    yield home
    LocalServer(home).stop()


def segment(server_home: Path, *args: str, timeout: float = 900) -> list[dict]:
    """Run `segment ARGS --json` and return its JSON lines."""
    env = {**os.environ, "SEGMENT_SERVER_HOME": str(server_home)}
    # The runs must report to this session's own server, which the fixture stops afterwards.
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([str(SEGMENT), *args, "--json"], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=REPO)
    assert done.returncode == 0, f"segment {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


@pytest.fixture(scope="session")
def series(server_home, tmp_path_factory) -> dict[str, Path]:
    """Two months of the sample, so that December has a previous month: as-of month -> run folder."""
    artifacts = tmp_path_factory.mktemp("series")
    lines = segment(server_home, "backfill", "--input", str(SAMPLE), "--from", "2011-11", "--to", "2011-12",
                    "--artifacts", str(artifacts))
    months = {line["as_of"]: Path(line["run_dir"]) for line in lines if "run_dir" in line}
    assert set(months) == {"2011-11", "2011-12"}, lines
    for run_dir in months.values():
        build_report(run_dir)
    return months


@pytest.fixture(scope="session")
def full_report(series) -> Path:
    return series["2011-12"] / REPORT_FILE


@pytest.fixture(scope="session")
def first_month_report(series) -> Path:
    return series["2011-11"] / REPORT_FILE


@pytest.fixture(scope="session")
def methods_off_report(server_home, tmp_path_factory) -> Path:
    artifacts = tmp_path_factory.mktemp("methods-off")
    (line,) = segment(server_home, "run", "--input", str(SAMPLE), "--artifacts", str(artifacts), *SWITCHES)
    return build_report(Path(line["run_dir"]))


# --- the browser ----------------------------------------------------------------------------------

class Opened:
    """A report open in a page that may load nothing but itself and data: URLs."""

    def __init__(self, browser, report: Path, viewport: dict):
        self.url = report.resolve().as_uri()
        self.aborted: list[str] = []
        self.page = browser.new_page(viewport=viewport)
        self.page.route("**/*", self._route)
        self.page.goto(self.url, wait_until="load")

    def _route(self, route):
        url = route.request.url
        if url == self.url or url.startswith("data:"):
            route.continue_()
        else:
            self.aborted.append(url)
            route.abort()

    def section_ids(self) -> list[str]:
        return self.page.eval_on_selector_all("main h2[id]", "hs => hs.map(h => h.id)")

    def close(self):
        self.page.close()


@pytest.fixture
def open_report(browser):
    opened: list[Opened] = []

    def open_(report: Path, viewport: dict = DESKTOP) -> Opened:
        page = Opened(browser, report, viewport)
        opened.append(page)
        return page

    yield open_
    for page in opened:
        page.close()
    # Checked after every test: the report asked for nothing but itself.
    assert [url for page in opened for url in page.aborted] == []


def screenshot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / name), full_page=True)


# --- sections -------------------------------------------------------------------------------------

def test_full_run_has_every_section_in_order(open_report, full_report):
    page = open_report(full_report)
    assert page.section_ids() == ALL_SECTIONS
    toc = page.page.eval_on_selector_all(".toc a", "as => as.map(a => a.getAttribute('href'))")
    assert toc == [f"#{sid}" for sid in ALL_SECTIONS]
    text = page.page.inner_text("body")
    # The propensity section carries CHAID's leaves with its target.
    assert page.page.query_selector("#chaid-leaves") is not None
    assert "buys again within 3 months" in text
    # The previous run is named, and nothing is listed as left out.
    manifest = json.loads((full_report.parent / "manifest.json").read_text())
    assert manifest["previous"]["run_id"] in text
    assert "Not in this report" not in text and "did not run" not in text
    screenshot(page.page, "report-desktop.png")


def test_methods_off_leaves_their_sections_out_and_says_so(open_report, methods_off_report):
    page = open_report(methods_off_report)
    assert page.section_ids() == METHODS_OFF_SECTIONS
    notes = page.page.inner_text(".callout")
    for flag in SWITCHES:
        assert flag in notes
    assert "first run of its series" in notes
    # Best sellers without the basket stage: no "other items you might like" column.
    assert "Other items you might like" not in page.page.inner_text("section[aria-labelledby=best-sellers]")
    screenshot(page.page, "report-methods-off-desktop.png")


def test_first_month_has_no_migration(open_report, first_month_report):
    page = open_report(first_month_report)
    assert page.section_ids() == [s for s in ALL_SECTIONS if s != "migration"]
    assert "first run of its series" in page.page.inner_text(".callout")


def test_numbers_are_formatted_for_people(full_report):
    html = full_report.read_text(encoding="utf-8")
    manifest = Manifest.model_validate_json((full_report.parent / "manifest.json").read_text())
    assert f"{manifest.metric('clean', 'rows_in'):,}" in html           # 153,865
    assert f"{manifest.rows_clean:,}" in html
    profiles = pd.read_parquet(full_report.parent / "segment_profiles.parquet")
    for share in profiles["share"]:
        assert fmt_pct(share) in html                                    # 15.0%
    assert fmt_money(profiles["total_sales"].iloc[0]) in html            # whole units from 1,000
    assert fmt_money(1234.5) == "1,234" and fmt_money(42.125) == "42.12" and fmt_pct(0.00004) == "<0.1%"


# --- self-contained, responsive, printable --------------------------------------------------------

@pytest.mark.parametrize("which", ["full", "methods_off"])
def test_every_image_is_embedded_and_loads(request, open_report, which):
    report = request.getfixturevalue(f"{which}_report")
    page = open_report(report)
    images = page.page.evaluate(
        "() => Array.from(document.images).map(i => ({src: i.getAttribute('src').slice(0, 22),"
        " w: i.naturalWidth, alt: i.alt, width: i.getAttribute('width')}))")
    pngs = sorted((report.parent / "plots").glob("*.png"))
    assert len(images) == len(pngs) > 0
    for image in images:
        assert image["src"] == "data:image/png;base64,"
        assert image["w"] > 0 and image["alt"] and image["width"]


def test_the_lifetime_value_section_leads_with_value_at_stake_and_shows_its_check(open_report, full_report):
    """Rendered offline in Chromium: value per segment first, customers at risk, the model's check, figures."""
    page = open_report(full_report)
    section = page.page.locator("section[aria-labelledby=value]")
    text = section.inner_text()
    assert text.index("Value at stake per segment") < text.index("How well the model predicts here")
    for words in ("Customers at high churn risk", "90%:", "Predicted / observed purchases"):
        assert words.casefold() in text.casefold(), words   # fact labels are set in capitals
    figures = section.locator("img")
    assert figures.count() == 3
    for i in range(figures.count()):
        assert figures.nth(i).evaluate("i => i.complete && i.naturalWidth > 0")
    manifest = Manifest.model_validate_json((full_report.parent / "manifest.json").read_text())
    segments = pd.read_parquet(full_report.parent / "segment_value.parquet")
    assert fmt_money(segments.loc[segments["grouping"] == "kmeans", "clv_total"].max()) in text
    assert manifest.stages["clv"].metrics["holdout"]["holdout_months"] >= 1
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    section.screenshot(path=str(SCREENSHOTS / "report-value-section.png"))
    assert (SCREENSHOTS / "report-value-section.png").stat().st_size > 20_000


@pytest.mark.parametrize("which", ["full", "methods_off"])
def test_phone_has_no_page_wide_horizontal_scroll(request, open_report, which):
    report = request.getfixturevalue(f"{which}_report")
    page = open_report(report, PHONE)
    assert page.page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    # Images scale down to the width; wide tables scroll inside their own box.
    widest = page.page.evaluate("Math.max(...Array.from(document.images).map(i => i.getBoundingClientRect().right))")
    assert widest <= PHONE["width"]
    screenshot(page.page, f"report-{which.replace('_', '-')}-phone.png")


# A4 less the print stylesheet's side margins (210 - 2 × 12 mm), in CSS pixels.
A4_CONTENT = {"width": round((210 - 24) / 25.4 * 96), "height": 1000}


def test_prints_to_pdf(open_report, full_report, tmp_path):
    page = open_report(full_report, A4_CONTENT)
    page.page.emulate_media(media="print")
    # Paper cannot scroll: nothing is wider than the page, no table is cut on the right.
    assert page.page.evaluate("document.documentElement.scrollWidth") <= A4_CONTENT["width"]
    assert page.page.evaluate(
        "Array.from(document.querySelectorAll('.table-wrap')).filter(w => w.scrollWidth > w.clientWidth + 1)"
        ".map(w => w.getAttribute('aria-label'))") == []
    # Printed links show their address; figures are kept whole.
    after = page.page.evaluate(
        "getComputedStyle(document.querySelector('.docs-link a'), '::after').content")
    assert "validation/docs/index.html" in after
    pdf = page.page.pdf(format="A4", print_background=True)
    assert pdf.startswith(b"%PDF") and len(pdf) > 50_000
    (tmp_path / "report.pdf").write_bytes(pdf)


class References(HTMLParser):
    """Every URL-valued attribute and every tag of the page."""

    URL_ATTRIBUTES = {"src", "href", "srcset", "action", "poster", "data", "formaction", "xlink:href", "background"}

    def __init__(self):
        super().__init__()
        self.urls: list[tuple[str, str, str]] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        self.urls += [(tag, name, value or "") for name, value in attrs if name in self.URL_ATTRIBUTES]


@pytest.mark.parametrize("which", ["full", "methods_off"])
def test_references_nothing_outside_the_file(request, which):
    report = request.getfixturevalue(f"{which}_report")
    html = report.read_text(encoding="utf-8")
    parsed = References()
    parsed.feed(html)
    external = [u for u in parsed.urls if u[2].strip().lower().startswith(("http:", "https:", "//", "file:"))]
    assert external == []
    assert not any(tag in ("script", "link", "iframe", "object", "embed") for tag, _ in parsed.tags)
    assert "@import" not in html and "url(" not in html
    links = {value for tag, name, value in parsed.urls if tag == "a"}
    docs = {link for link in links if not link.startswith("#")}
    # The only links out: the Data Docs and the customer table beside the report, relative.
    assert docs == {"validation/docs/index.html", "customers.parquet"}
    assert all((report.parent / link).is_file() for link in docs)
    # Every in-page link has its target.
    ids = {attrs.get("id") for _, attrs in parsed.tags}
    assert {link[1:] for link in links if link.startswith("#")} <= ids


def test_same_folder_gives_the_same_bytes(full_report, methods_off_report):
    for report in (full_report, methods_off_report):
        first = report.read_bytes()
        assert build_report(report.parent) == report
        assert report.read_bytes() == first
        assert not list(report.parent.glob(f".{REPORT_FILE}.*"))  # no temporary file left behind


# --- older runs and runs that failed --------------------------------------------------------------

def test_a_run_folder_of_an_older_version(open_report, methods_off_report, tmp_path):
    """No ids, transitions or stability yet, no k facts, no plots, a leaner manifest: sections shrink, none breaks."""
    old = tmp_path / "old-run"
    shutil.copytree(methods_off_report.parent, old, symlinks=False)
    (old / REPORT_FILE).unlink()
    for name in ("segment_stability.parquet", "segment_migration.parquet", "segment_lineage.parquet",
                 "k_selection.parquet", "top_products.parquet"):
        (old / name).unlink(missing_ok=True)
    shutil.rmtree(old / "plots")
    profiles = pd.read_parquet(old / "segment_profiles.parquet")
    profiles.drop(columns=[c for c in ("segment_id", "transition", "came_from", "stability", "stability_reading")
                           if c in profiles]).to_parquet(old / "segment_profiles.parquet", index=False)
    manifest = json.loads((old / "manifest.json").read_text())
    for key in ("previous", "data_docs", "resumed", "flow_run_id"):
        manifest.pop(key, None)
    manifest["parameters"].pop("methods", None)
    manifest["stages"] = {name: record for name, record in manifest["stages"].items()
                          if name in ("ingest", "clean", "features", "normalize", "cluster", "profile")}
    (old / "manifest.json").write_text(json.dumps(manifest))

    report = build_report(old)
    page = open_report(report)
    assert page.section_ids() == ["run", "segments", "data-quality"]
    notes = page.page.inner_text(".callout")
    assert "made without it" in notes and "first run of its series" in notes
    assert page.page.query_selector_all("img") == []
    segments = page.page.inner_text("section[aria-labelledby=segments]")
    assert "stability" not in segments.lower() and "S1" not in segments  # no ids, no stability yet
    assert page.page.evaluate("document.documentElement.scrollWidth") <= DESKTOP["width"]


def test_context_renders_without_files_for_a_failed_run():
    """The rendering alone: a manifest and frames in memory, a run that stopped early."""
    manifest = Manifest(
        run_id="20260101T000000Z-abcdef01", status="failed", started_at="2026-01-01T00:00:00+00:00",
        as_of="2011-12", cutoff="2011-12-01T00:00:00", input=InputInfo(path="export.csv", sha256="0" * 64, rows=10),
        error="Stage clean stopped: no invoice lines remain after cleaning <critical>",
        stages={"clean": StageRecord(status="failed", metrics={"rows_in": 10, "rows_dropped": {"missing_customer": 10},
                                                               "rows_clean": 0},
                                     gates={"clean_invoices": {"success": False, "evaluated": 18, "failed_critical": 1,
                                                               "failed_warning": 0, "critical": ["no lines <left>"],
                                                               "warnings": []}})},
    )
    context = report_context(manifest, frames={}, figures={})
    assert [item["id"] for item in context["toc"]] == ["run", "data-quality"]
    html = render_report(context)
    assert "This run failed" in html
    assert "no invoice lines remain after cleaning &lt;critical&gt;" in html   # escaped, not markup
    assert "no lines &lt;left&gt;" in html
    assert 'class="badge bad">failed</span>' in html
    assert "<img" not in html


# --- the real UCI data ----------------------------------------------------------------------------

@pytest.mark.real_data
@pytest.mark.slow
def test_real_data_report_is_at_most_5_mb(server_home, open_report, tmp_path):
    (line,) = segment(server_home, "run", "--input", str(real(REAL_PARQUET)), "--artifacts", str(tmp_path / "artifacts"))
    report = build_report(Path(line["run_dir"]))
    size = report.stat().st_size
    assert size <= MAX_BYTES, f"{report} is {size:,} bytes"
    page = open_report(report)
    assert page.section_ids() == [s for s in ALL_SECTIONS if s != "migration"]
    assert page.page.evaluate("Array.from(document.images).every(i => i.naturalWidth > 0)")
    screenshot(page.page, "report-uci-desktop.png")
