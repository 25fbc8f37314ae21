"""What a stage's cached output depends on besides its inputs: code, libraries and quality suites.

A stage's code is the source of every project module its transform can reach through imports,
followed transitively (constants imported from another module included), read from the files
without importing anything. The libraries are those whose versions decide a result's bytes.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
from collections.abc import Iterable
from functools import lru_cache
from importlib import metadata
from pathlib import Path

PACKAGE = "customer_segments"
# Bump when the stage runner changes what it writes, so every cached output is recomputed once.
RUNNER_VERSION = "2"
# Libraries whose version can change a stage's output (numbers, file bytes, plots).
RESULT_LIBRARIES = ("numpy", "pandas", "pyarrow", "scikit-learn", "scipy", "matplotlib", "kneed", "python-calamine")


def fingerprint(modules: Iterable[str], extra: str = "") -> str:
    """sha256 (16 hex digits) of the modules' closure, the library versions and `extra`."""
    digest = hashlib.sha256(extra.encode())
    for name in sorted(set().union(*(module_closure(m) for m in modules))):
        digest.update(name.encode() + b"\0" + _source(name) + b"\0")
    for library, version in library_versions().items():
        digest.update(f"{library}=={version}\n".encode())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=None)
def module_closure(root: str) -> frozenset[str]:
    """The project modules `root` imports, directly or through others, `root` included."""
    seen: set[str] = set()
    todo = [root]
    while todo:
        name = todo.pop()
        if name in seen or _origin(name) is None:
            continue
        seen.add(name)
        todo.extend(_imported(name))
    return frozenset(seen)


def suite_digest(dataset: str) -> str | None:
    """sha256 of a dataset's quality suite: a changed suite must re-validate, not reuse."""
    from customer_segments.tasks.runtime.quality.suites import suites_dir

    path = suites_dir() / f"{dataset}.json"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    versions = {}
    for name in RESULT_LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _imported(name: str) -> set[str]:
    """Project modules named by the import statements of a module (at any depth of its code)."""
    tree = ast.parse(_source(name))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg.mod import X`: pkg.mod for sure, pkg.mod.X too when X is a module.
            candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for candidate in candidates:
            # Parent packages run their __init__ on import, so they count as well.
            parts = candidate.split(".")
            found |= {".".join(parts[:i]) for i in range(2, len(parts) + 1) if parts[0] == PACKAGE}
    return {m for m in found if _origin(m) is not None}


@lru_cache(maxsize=None)
def _origin(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


@lru_cache(maxsize=None)
def _source(name: str) -> bytes:
    return _origin(name).read_bytes()
