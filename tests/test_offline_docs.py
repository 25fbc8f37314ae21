"""Data Docs work offline: every CSS/JS/font a page loads is a vendored local copy.

Self-sufficient (no shared conftest): the site is built from real validation reports with the
project's suites, then checked as text and in headless Chromium with all network cut off.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from customer_segments.tasks.runtime.quality import offline_docs
from customer_segments.tasks.runtime.quality.docs import build_data_docs
from customer_segments.tasks.runtime.quality.offline_docs import OfflineDocsError, make_offline
from customer_segments.tasks.runtime.quality.validation import validate
from support.frames import k_selection_frame

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOTS = ROOT / "artifacts" / "test-screenshots"
# Off-site URL: absolute http(s) or protocol-relative //host.
EXTERNAL = re.compile(r"^\s*(?:https?:)?//", re.I)
ANY_URL = re.compile(r"(?:https?:)?//[A-Za-z0-9][\w.-]*\.[A-Za-z]{2,}[^\s\"'<>)\\]*")


def gx_templates() -> Path:
    import great_expectations

    return Path(great_expectations.__file__).parent / "render" / "view"


# --- the site -----------------------------------------------------------------------------------


def broken_features_frame() -> pd.DataFrame:
    total = np.array([100.0, 250.5, 80.25, np.inf, 12.0])
    orders = np.array([1, 3, 0, 7, 1], dtype="int64")
    return pd.DataFrame(
        {
            "CustomerID": pd.Series(["12346", "12346", "12348", "12349", "12350"], dtype="str"),
            "TotalSales": total,
            "OrderCount": orders,
            "AvgOrderValue": [100.0, 83.5, 80.25, 285.7, 13.0],
        }
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    ok = validate(k_selection_frame(), "k_selection")
    failed = validate(broken_features_frame(), "customer_features", {"k_max": 8})
    assert ok.success and not failed.success
    out = tmp_path_factory.mktemp("offline") / "docs"
    index = build_data_docs({"k_selection": ok.report, "customer_features": failed.report}, out)
    assert index == out.resolve() / "index.html"
    return out.resolve()


def site_files(site: Path, *suffixes: str) -> list[Path]:
    return sorted(p for p in site.rglob("*") if p.suffix in suffixes and p.is_file())


class Loads(HTMLParser):
    """What a page loads (script/link/img/... URLs, CSS url() and @import) and where it links to."""

    RESOURCE_ATTRS = {"src", "srcset", "poster", "data", "background"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.resources: list[str] = []
        self.anchors: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if value is None:
                continue
            if key == "href":
                (self.anchors if tag in ("a", "area") else self.resources).append(value)
            elif key == "srcset":
                self.resources += [c.split()[0] for c in value.split(",") if c.strip()]
            elif key in self.RESOURCE_ATTRS:
                self.resources.append(value)
            elif key == "style":
                self.resources += css_loads(value)
        self._in = tag

    def handle_data(self, data):
        if self._in == "style":
            self.resources += css_loads(data)
        elif self._in == "script":
            # bootstrap-table builds rows from HTML strings held in the page's script data.
            for tag, value in re.findall(r"<(\w+)\b[^<>]*?\b(?:src|href)=\\?[\"']([^\"'\\]+)", data):
                (self.anchors if tag.lower() in ("a", "area") else self.resources).append(value)

    def handle_endtag(self, tag):
        self._in = None


DATA_URI = re.compile(r"""url\(\s*(?:"data:[^"]*"|'data:[^']*'|data:[^)]*)\s*\)""")


def css_loads(css: str) -> list[str]:
    """URLs a stylesheet loads (data: URIs left out: they load nothing)."""
    css = DATA_URI.sub("", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
    found = re.findall(r"url\(\s*([^)]*?)\s*\)|@import\s+[\"']([^\"']+)", css)
    return [(url or imported).strip("'\" ") for url, imported in found]


def parse(path: Path) -> Loads:
    page = Loads()
    page.feed(path.read_text("utf-8"))
    return page


# --- text checks --------------------------------------------------------------------------------


def test_pages_and_stylesheets_load_nothing_from_off_site(site):
    pages = site_files(site, ".html")
    assert {p.relative_to(site).parts[0] for p in pages} == {"index.html", "validations", "expectations"}
    for path in pages:
        page = parse(path)
        assert page.resources, path
        offsite = [u for u in page.resources if EXTERNAL.match(u)]
        assert offsite == [], f"{path.relative_to(site)} loads {offsite}"
        # Every local resource resolves to a file of the site (relative to the page's folder).
        for url in page.resources:
            if url.startswith(("data:", "#")) or not url:
                continue
            target = (path.parent / url.split("?")[0]).resolve()
            if url.endswith("favicon.ico"):
                continue  # GX's own favicon path is one level short on validation pages
            assert target.is_file(), f"{path.relative_to(site)}: {url} -> {target}"
        # What is left off-site is a link a reader may click, never something the page loads.
        text = path.read_text("utf-8")
        leftovers = set(ANY_URL.findall(text)) - set(page.anchors)
        assert leftovers == set(), f"{path.relative_to(site)} still names {leftovers}"
        assert all(a.startswith("https://greatexpectations.io") for a in page.anchors if EXTERNAL.match(a))

    for path in site_files(site, ".css"):
        css = path.read_text("utf-8")
        loads = css_loads(css)
        assert [u for u in loads if EXTERNAL.match(u)] == [], path
        for url in loads:
            if not url.startswith("data:"):
                assert (path.parent / url.split("?")[0].split("#")[0]).resolve().is_file(), f"{path}: {url}"
        # Outside comments and data: URIs (whose SVG names its XML namespace) no URL remains.
        bare = DATA_URI.sub("", re.sub(r"/\*.*?\*/", "", css, flags=re.S))
        bare = re.sub(r"sourceMappingURL=data:\S*", "", bare)
        assert not ANY_URL.findall(bare), f"{path.relative_to(site)}: {ANY_URL.findall(bare)[:3]}"


def test_every_known_url_maps_to_a_vendored_file_and_the_site_has_it(site):
    for url, rel in offline_docs.VENDORED.items():
        assert (offline_docs.VENDOR_DIR / rel).is_file(), url
        assert (site / "static" / "vendor" / rel).is_file(), url
    # Font Awesome loads its fonts relative to its CSS: they came along.
    fonts = site / "static/vendor/@fortawesome/fontawesome-free@6.6.0/webfonts"
    assert sorted(p.suffix for p in fonts.iterdir()) == [".ttf"] * 4 + [".woff2"] * 4
    # The licences travel with the copies.
    assert (site / "static/vendor/VENDORED.md").is_file()
    assert len(list((site / "static/vendor/licenses").glob("*-LICENSE.txt"))) == 10


def test_gx_templates_reference_only_known_urls():
    """A GX upgrade that adds or changes a CDN link fails here, before any site is built."""
    view = gx_templates()
    known = set(offline_docs.VENDORED) | set(offline_docs.SITE_FILES)
    referenced = set()
    for path in [*(view / "templates").glob("*.j2"), *(view / "static" / "styles").glob("*.css")]:
        text = path.read_text("utf-8")
        for tag, url in re.findall(r"<(\w+)\b[^<>]*?\b(?:src|href)=[\"']((?:https?:)?//[^\"']+)", text):
            if tag.lower() not in ("a", "area"):
                referenced.add(url)
        referenced.update(re.findall(r"url\(\s*['\"]?((?:https?:)?//[^'\")]+)", text))
    # The logo is built from a Jinja variable: the template sets its base URL separately.
    navbar = (view / "templates" / "top_navbar.j2").read_text("utf-8")
    base = re.search(r'static_images_dir = "(https://[^"]+)"', navbar).group(1)
    referenced.add(base + "logo-long.png")
    assert referenced == known


def test_vendored_scripts_are_the_bytes_gx_pins_with_sri():
    """GX pins two scripts with Subresource Integrity hashes; the vendored copies match them."""
    template = (gx_templates() / "templates" / "js_script_imports.j2").read_text("utf-8")
    pinned = re.findall(r'src="([^"]+)"\s+integrity="sha384-([^"]+)"', template)
    assert len(pinned) == 2
    for url, digest in pinned:
        data = (offline_docs.VENDOR_DIR / offline_docs.VENDORED[url]).read_bytes()
        assert base64.b64encode(hashlib.sha384(data).digest()).decode() == digest, url


def test_vendored_md_records_every_asset_and_licence():
    vendored = (offline_docs.VENDOR_DIR / "VENDORED.md").read_text("utf-8")
    files = [p.relative_to(offline_docs.VENDOR_DIR).as_posix()
             for p in offline_docs.VENDOR_DIR.rglob("*") if p.is_file() and p.parent.name != "licenses"
             and p.name != "VENDORED.md"]
    for rel in files:
        package_path = rel.split("/", 2 if rel.startswith("@") else 1)[-1]
        assert package_path in vendored, rel
    for licence in (offline_docs.VENDOR_DIR / "licenses").iterdir():
        assert f"licenses/{licence.name}" in vendored, licence.name


# --- the guard ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet, url",
    [
        ('<script src="https://cdn.example.com/new-lib@1.0/lib.min.js"></script>', "https://cdn.example.com/new-lib@1.0/lib.min.js"),
        ('<link rel="stylesheet" href="//fonts.example.com/css?family=Inter:400,700">', "//fonts.example.com/css?family=Inter:400,700"),
        ('<img srcset="static/images/logo-long.png 1x, https://cdn.example.com/logo@2x.png 2x">', "https://cdn.example.com/logo@2x.png"),
        ('<img src="https://cdn.example.com/logo.png" alt="">', "https://cdn.example.com/logo.png"),
        ("<style>@font-face { src: url('https://fonts.example.com/inter.woff2'); }</style>", "https://fonts.example.com/inter.woff2"),
        ("<style>@import 'https://cdn.example.com/theme.css';</style>", "https://cdn.example.com/theme.css"),
        # A newer bootstrap-table than the one vendored is not silently pointed at the old copy.
        ('<script src="https://unpkg.com/bootstrap-table@1.24.0/dist/bootstrap-table.min.js"></script>',
         "https://unpkg.com/bootstrap-table@1.24.0/dist/bootstrap-table.min.js"),
        # ... and neither is a file below an unpinned URL.
        ('<script src="https://cdn.jsdelivr.net/npm/vega@5/build/vega.js"></script>', "https://cdn.jsdelivr.net/npm/vega@5/build/vega.js"),
    ],
)
def test_an_unknown_offsite_resource_raises_naming_it(tmp_path, snippet, url):
    page = tmp_path / "validations" / "suite" / "run" / "time"
    page.mkdir(parents=True)
    (page / "batch.html").write_text(
        "<html><head>"
        '<script src="https://code.jquery.com/jquery-3.7.1.min.js"></script>'
        f"{snippet}</head><body></body></html>",
        encoding="utf-8",
    )
    with pytest.raises(OfflineDocsError) as raised:
        make_offline(tmp_path)
    assert url in str(raised.value) and "validations/suite/run/time/batch.html" in str(raised.value)


def test_links_are_kept_and_known_urls_rewritten_relative_to_each_page(tmp_path):
    (tmp_path / "static" / "images").mkdir(parents=True)
    (tmp_path / "static" / "images" / "logo-long.png").write_bytes(b"png")
    deep = tmp_path / "validations" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    html = (
        '<script src="https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js" '
        'integrity="sha384-x" crossorigin="anonymous"></script>'
        '<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png?d=1&dataContextId=2">'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    (tmp_path / "index.html").write_text(html, encoding="utf-8")
    (deep / "page.html").write_text(html, encoding="utf-8")

    replaced = make_offline(tmp_path)

    assert replaced == [
        "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png",
        "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js",
    ]
    assert (tmp_path / "index.html").read_text("utf-8") == (
        '<script src="static/vendor/bootstrap@4.3.1/dist/js/bootstrap.min.js"></script>'
        '<img src="static/images/logo-long.png">'
        '<a href="https://greatexpectations.io">GX</a>'
    )
    assert '<script src="../../../../static/vendor/bootstrap@4.3.1/dist/js/bootstrap.min.js"></script>' in (
        deep / "page.html"
    ).read_text("utf-8")
    # Running it again finds nothing left to do.
    assert make_offline(tmp_path) == []


# --- in a browser, with the network cut off -----------------------------------------------------


def offline_page(browser, **context_options):
    """A page whose requests to anything but file:// and the loopback are aborted, and recorded."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, **context_options)
    page = context.new_page()
    page.attempted = []
    page.failed = []
    page.errors = []

    def route(r):
        url = r.request.url
        if url.startswith(("file://", "http://127.0.0.1", "data:")):
            r.continue_()
        else:
            page.attempted.append(url)
            r.abort()

    page.route("**/*", route)
    page.on("requestfailed", lambda req: page.failed.append(req.url))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return page


def shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"offline-docs-{name}.png"), full_page=True)


def test_index_and_validation_page_render_offline(site, browser):
    page = offline_page(browser)
    page.goto((site / "index.html").as_uri())

    # bootstrap-table renders the index rows from the page's data: they are there and visible.
    table = "#section-1-content-block-2-1-body-table"
    for suite in ("k_selection", "customer_features"):
        page.locator(f"{table} tbody tr", has_text=suite).first.wait_for(state="visible", timeout=15_000)
    assert page.locator(f"{table} tbody tr").count() == 2
    assert page.evaluate("typeof $ !== 'undefined' && typeof $.fn.bootstrapTable !== 'undefined'")
    # Popper is pinned by an SRI hash in GX's page: it loads only because the rewrite drops the
    # integrity/crossorigin attributes that a file:// page cannot satisfy.
    assert page.evaluate("typeof Popper !== 'undefined' && typeof $.fn.modal !== 'undefined'")
    assert page.evaluate("typeof $.fn.datepicker !== 'undefined'")
    # Charts (GX draws them with vega-embed, e.g. for KL-divergence expectations) render offline.
    page.evaluate("""() => {
        const div = document.createElement('div'); div.id = 'chart-probe'; document.body.appendChild(div);
        return vegaEmbed('#chart-probe', {data: {values: [{x: 1, y: 2}, {x: 2, y: 3}]}, mark: 'bar',
            encoding: {x: {field: 'x', type: 'ordinal'}, y: {field: 'y', type: 'quantitative'}}},
            {actions: false, renderer: 'svg'}).then(() => true);
    }""")
    assert page.locator("#chart-probe svg g.mark-rect path").count() == 2  # one per bar
    page.evaluate("document.getElementById('chart-probe').remove()")
    # Bootstrap's CSS is applied (pl-5 = 3rem) and Font Awesome's font drew the status icons.
    assert page.evaluate("getComputedStyle(document.querySelector('.container-fluid')).paddingLeft") == "48px"
    page.evaluate("document.fonts.ready")
    assert page.evaluate("document.fonts.check('900 16px \"Font Awesome 6 Free\"')")
    assert page.locator("i.fa-check-circle").first.is_visible()
    shot(page, "index")

    # A click on the failed suite's row opens its validation page (a relative link, four levels down).
    page.locator(f"{table} tbody tr", has_text="customer_features").first.click()
    page.wait_for_url(re.compile(r".*/validations/customer_features/.+\.html$"), timeout=15_000)
    page.get_by_text("Overview").first.wait_for(state="visible", timeout=15_000)
    assert page.locator("table").count() > 1
    body = page.inner_text("body")
    assert "customer_features" in body and "12346" in body  # the duplicated id is listed as unexpected
    assert page.evaluate("typeof $ !== 'undefined' && typeof $.fn.bootstrapTable !== 'undefined'")
    assert page.evaluate("getComputedStyle(document.querySelector('.container-fluid')).paddingLeft") == "48px"
    assert page.locator("i.fa-times, i.fa-times-circle, i.fa-circle-xmark").first.is_visible()
    shot(page, "validation")

    # The suite's page too.
    page.goto((site / "expectations" / "customer_features.html").as_uri())
    page.get_by_text("Table-Level Expectations").first.wait_for(state="visible", timeout=15_000)
    shot(page, "suite")

    assert page.attempted == [], f"requests to the network were attempted: {page.attempted}"
    assert [u for u in page.failed if "/static/vendor/" in u] == []
    assert page.errors == []
    page.context.close()


def test_without_the_rewrite_the_index_table_stays_empty(tmp_path, browser, monkeypatch):
    """The check above can fail: GX's own pages, offline, try the CDNs and render no rows."""
    from customer_segments.tasks.runtime.quality import docs

    monkeypatch.setattr(docs, "make_offline", lambda site_dir, pages=None: [])
    index = build_data_docs({"k_selection": validate(k_selection_frame(), "k_selection").report}, tmp_path / "docs")
    page = offline_page(browser)
    page.goto(index.as_uri())
    page.wait_for_load_state("load")
    known = set(offline_docs.VENDORED) | set(offline_docs.SITE_FILES)
    assert "https://code.jquery.com/jquery-3.7.1.min.js" in page.attempted
    assert {u.split("?")[0] for u in page.attempted} <= known
    assert page.locator("#section-1-content-block-2-1-body-table tbody tr").count() == 0
    assert page.evaluate("typeof $") == "undefined"
    page.context.close()


def test_dark_mode_renders_offline(site, browser):
    page = offline_page(browser, color_scheme="dark")
    page.goto((site / "index.html").as_uri())
    page.locator("#section-1-content-block-2-1-body-table tbody tr").first.wait_for(state="visible", timeout=15_000)
    # bootstrap-prefers-dark's CSS is applied: the page background is dark.
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert sum(int(c) for c in re.findall(r"\d+", background)[:3]) < 150, background
    shot(page, "index-dark")
    assert page.attempted == []
    page.context.close()


def test_gate_build_docs_links_an_offline_site_into_the_run(tmp_path):
    """gate.build_docs caches the built site and copies it into validation/docs/: the copy works too."""
    from customer_segments.tasks.runtime.quality import gate

    validation_dir = tmp_path / "run" / "validation"
    validation_dir.mkdir(parents=True)
    report = validate(k_selection_frame(), "k_selection").report
    (validation_dir / "k_selection.json").write_text(json.dumps(report), encoding="utf-8")

    index = gate.build_docs(validation_dir, tmp_path / "cache")

    assert index == validation_dir / "docs" / "index.html"
    for path in site_files(validation_dir / "docs", ".html"):
        assert [u for u in parse(path).resources if EXTERNAL.match(u)] == [], path
    assert (validation_dir / "docs/static/vendor/jquery@3.7.1/dist/jquery.min.js").is_file()
    assert 'src="static/vendor/jquery@3.7.1/dist/jquery.min.js"' in index.read_text("utf-8")
