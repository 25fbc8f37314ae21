"""Make a GX Data Docs site work without network: vendored CSS/JS/fonts instead of CDN links.

GX's templates load Bootstrap, jQuery, bootstrap-table, Font Awesome, Vega and friends from
CDNs, and its logo from an S3 bucket. Offline, which is the usual case for this tool, the pages
lose their styling and the index page's tables stay empty, because bootstrap-table renders
their rows. GX will not bundle these files, so this module ships copies (vendor/, see
vendor/VENDORED.md) and points the pages at them.

The rewrite is plain text replacement over the URLs known for the GX version in use. Anything
else a page or stylesheet would load from off-site afterwards raises OfflineDocsError, naming
the URL: a GX upgrade that adds a CDN link must be noticed, not fail silently offline.
Links a reader may click (``<a href>``, e.g. to greatexpectations.io) are left alone: they
load nothing when the page opens.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

VENDOR_DIR = Path(__file__).with_name("vendor")
# Where the vendored tree goes in a site, relative to the site's root.
SITE_VENDOR = Path("static", "vendor")

# Every external resource GX 1.24.1's templates reference (index_page.j2, page.j2,
# js_script_imports.j2), mapped to its copy under vendor/: "<npm package>@<version>/<path in
# the package>", except that Vega's build/ folder is left out (the repository's .gitignore
# ignores every folder named build). Versions are those in the URLs; vega@5, vega-lite@5 and vega-embed@6 are
# unpinned there (the CDN serves the latest release of that major), so the latest release of
# each major at vendoring time is used.
VENDORED: dict[str, str] = {
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.css",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        "bootstrap-table@1.19.1/dist/bootstrap-table.min.js",
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        "bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        "bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css",
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        "bootstrap@4.3.1/dist/css/bootstrap.min.css",
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        "bootstrap@4.3.1/dist/js/bootstrap.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        "popper.js@1.12.9/dist/umd/popper.min.js",
    "https://code.jquery.com/jquery-3.7.1.min.js":
        "jquery@3.7.1/dist/jquery.min.js",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        "bootstrap-datepicker@1.9.0/dist/css/bootstrap-datepicker.min.css",
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        "bootstrap-datepicker@1.9.0/dist/js/bootstrap-datepicker.min.js",
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        "@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css",
    # all.min.css loads ../webfonts/fa-*.woff2|ttf: the vendored tree keeps that layout.
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        "@fortawesome/fontawesome-free@6.6.0/css/all.min.css",
    # Only pages with a chart (e.g. KL-divergence expectations) use these, but every page loads them.
    "https://cdn.jsdelivr.net/npm/vega@5": "vega@5.33.1/vega.min.js",
    "https://cdn.jsdelivr.net/npm/vega-lite@5": "vega-lite@5.23.0/vega-lite.min.js",
    "https://cdn.jsdelivr.net/npm/vega-embed@6": "vega-embed@6.29.0/vega-embed.min.js",
}

# GX's logo comes from an S3 bucket, with a timestamp and the data context id appended as a
# query string. The site builder already copies GX's own images into static/images/ of every
# site, so the pages use that copy. There is no local dark-mode logo: in dark mode the light
# one is shown (the rule only swaps the navbar picture).
SITE_FILES: dict[str, str] = {
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png": "static/images/logo-long.png",
    "https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/full_logo_dark.png": "static/images/logo-long.png",
}

# A known URL, plus the query string GX may append (the logo's ?d=...&dataContextId=...).
# Longest first, so that no URL is cut short by another that is its prefix.
_KNOWN = re.compile(
    "(" + "|".join(re.escape(u) for u in sorted({**VENDORED, **SITE_FILES}, key=len, reverse=True)) + ")"
    + r"(?![\w.@/%-])(?:\?[^\s\"'<>)\\]*)?"
)

# What counts as off-site: an absolute http(s) URL or a protocol-relative //host one.
_OFFSITE = re.compile(r"(?:https?:)?//", re.I)
_EXTERNAL = r"(?:https?:)?//[^\s\"'<>)\\]+"
# Resources a page loads: any src/srcset/poster/data/background attribute, and href on any
# tag but <a>/<area> (those are links a reader clicks). Quotes may be backslash-escaped, as in
# the HTML strings that bootstrap-table's JSON data carries inside <script> blocks.
_TAG = re.compile(r"<([a-zA-Z][\w-]*)(\s[^<>]*?)/?>", re.S)
_ATTR = re.compile(
    r"""\b(src|srcset|poster|data|background|href)\s*=\s*(?:\\?"(.*?)\\?"|\\?'(.*?)\\?'|([^\s>"'\\]+))""", re.I | re.S
)
# Resources a stylesheet loads, in .css files and in <style> blocks / style attributes.
_CSS_REF = re.compile(r"""(?:url\(\s*(?:\\?["'])?\s*|@import\s+(?:\\?["']))(""" + _EXTERNAL + ")", re.I)
# SRI and CORS attributes of the rewritten tags: a page opened from file:// has an opaque
# origin, so Chromium refuses a crossorigin load of a file:// script, and an integrity check
# cannot pass without one. The vendored files are byte-identical to what the hashes name
# (tests/test_offline_docs.py checks it).
_SRI = re.compile(r"""\s+(?:integrity\s*=\s*(?:"[^"]*"|'[^']*')|crossorigin(?:\s*=\s*(?:"[^"]*"|'[^']*'))?)""", re.I)


class OfflineDocsError(RuntimeError):
    """A Data Docs page needs something from off-site that has no vendored copy."""


def make_offline(site_dir: Path, pages: Iterable[Path] | None = None) -> list[str]:
    """Copy the vendored assets into ``site_dir``/static/vendor and point every page at them.

    Rewrites each known external URL in the site's .html and .css files to the relative path of
    its local copy. Returns the distinct URLs replaced (without query strings), sorted. Raises
    OfflineDocsError if a page or stylesheet still loads anything from off-site afterwards.

    With ``pages``, only those files are rewritten and checked, and the vendored assets are not
    copied: a site built a page at a time (docs.DocsSite) does each page when it is rendered and
    the rest, with the assets, at the end.
    """
    site_dir = Path(site_dir).resolve()
    if pages is None:
        copy_vendored(site_dir)
        pages = site_files(site_dir)

    replaced: set[str] = set()
    problems: list[str] = []
    for path in sorted(pages):
        vendored = (site_dir / SITE_VENDOR) in path.parents
        text = path.read_text(encoding="utf-8")
        new = text if vendored else _rewrite(text, path.parent, site_dir, replaced)
        if new != text:
            path.write_text(new, encoding="utf-8")
        is_html = path.suffix.lower() != ".css"
        problems += [f"{path.relative_to(site_dir)}: {url}" for url in external_resources(new, html=is_html)]
    if problems:
        raise OfflineDocsError(
            "Data Docs load resources from off-site that have no vendored copy (add them to vendor/ and "
            "offline_docs.VENDORED, or drop the reference):\n  " + "\n  ".join(dict.fromkeys(problems))
        )
    return sorted(replaced)


def copy_vendored(site_dir: Path) -> None:
    """The vendored assets, into ``site_dir``/static/vendor."""
    missing = sorted(rel for rel in VENDORED.values() if not (VENDOR_DIR / rel).is_file())
    if missing:
        raise OfflineDocsError(f"Vendored Data Docs assets are missing from {VENDOR_DIR}: {', '.join(missing)}")
    shutil.copytree(VENDOR_DIR, Path(site_dir) / SITE_VENDOR, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__"))


def site_files(site_dir: Path) -> list[Path]:
    """The pages and stylesheets of a site, which may load something."""
    return sorted(p for p in Path(site_dir).rglob("*") if p.suffix.lower() in (".html", ".htm", ".css") and p.is_file())


def _rewrite(text: str, page_dir: Path, site_dir: Path, replaced: set[str]) -> str:
    def local(match: re.Match) -> str:
        url = match.group(1)
        replaced.add(url)
        if url in VENDORED:
            target = site_dir / SITE_VENDOR / VENDORED[url]
        else:
            target = site_dir / SITE_FILES[url]
            if not target.is_file():
                raise OfflineDocsError(f"{url} maps to {target.relative_to(site_dir)}, which the site does not have")
        # Pages sit at different depths (validations/<suite>/<run>/<time>/<batch>.html).
        return Path(os.path.relpath(target, page_dir)).as_posix()

    text = _KNOWN.sub(local, text)
    return _TAG.sub(lambda m: _strip_sri(m.group(0)) if "static/vendor/" in m.group(0) else m.group(0), text)


def _strip_sri(tag: str) -> str:
    return _SRI.sub("", tag)


def external_resources(text: str, html: bool = True) -> list[str]:
    """Off-site URLs that ``text`` (a page, or a stylesheet when ``html`` is false) would load."""
    found = [m.group(1) for m in _CSS_REF.finditer(text)]
    if html:
        for tag in _TAG.finditer(text):
            name = tag.group(1).lower()
            for attr in _ATTR.finditer(tag.group(2)):
                key = attr.group(1).lower()
                value = next(v for v in attr.groups()[1:] if v is not None).strip()
                if key == "href" and name in ("a", "area"):
                    continue
                # srcset holds "url 1x, url 2x": check each candidate, not just the first.
                values = [v.split()[0] for v in value.split(",") if v.strip()] if key == "srcset" else [value]
                found += [v for v in values if _OFFSITE.match(v)]
    return list(dict.fromkeys(found))
