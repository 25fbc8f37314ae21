"""Files that are either complete or absent: atomic writes, content hashes, Parquet in and out."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas loads on first use: the CLI imports this before it needs pandas
    import pandas as pd

CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over the target.

    A reader (or a resumed run) therefore sees the old file, the new file, or none: never half.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file private (0600); outputs are shared as any file the user writes.
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# Snappy: every Parquet reader has it, and at ten million lines it reads three times faster than
# zstd (0.6 s against 1.7 s) for files a third larger; each line-level file is read again by its
# gate and often by later stages.
COMPRESSION = "snappy"


def tune_memory() -> None:
    """How this process allocates the memory of large tables and arrays (see below); set before a
    stage computes, in every process that computes or validates. Neither changes a result."""
    use_jemalloc()
    numpy_without_huge_pages()


def freeze_imported() -> None:
    """Leave the objects this process holds so far (its imported modules, GX's context) out of
    the garbage collector's full passes from now on; once per process.

    Each full pass walks every object the process tracks: in the validator, which has imported
    GX, one took 0.07-0.1 s, and at ten million lines the run's three processes spent 3.7 s of
    CPU in them (2.5 s in the validator), nearly all walking objects that live as long as the
    process. Garbage is collected first, so that nothing already unreachable is kept; frozen
    objects are still freed when nothing refers to them. A collector the command turned off for
    its start-up is turned back on.
    """
    import gc

    global _frozen
    with _freezing:
        if not _frozen:
            gc.collect()
            gc.freeze()
            _frozen = True
    gc.enable()


_frozen, _freezing = False, threading.Lock()


def numpy_without_huge_pages() -> None:
    """Have numpy stop asking the kernel for transparent huge pages for its large arrays.

    numpy marks every large array for huge pages (madvise). On virtual machines like the one the
    benchmarks run on, the first touch of fresh huge pages is slow: the best sellers of ten
    million lines took 4.0 s against 1.9 s without them (a fresh process, 2 runs each), whole
    runs 26.0 s against 22.9 s with the methods off (medians of 2 alternating runs). Memory a
    process touched once is fast either way. A user's NUMPY_MADVISE_HUGEPAGE (0 or 1) is kept.
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    os.environ["NUMPY_MADVISE_HUGEPAGE"] = "0"  # for the processes this one starts
    try:
        from numpy._core.multiarray import _set_madvise_hugepage
    except ImportError:  # another numpy: it reads the variable when it is imported
        return
    _set_madvise_hugepage(False)


def release_memory_at_once() -> None:
    """Have Arrow's jemalloc give memory back to the system as soon as it is freed, in the
    processes started from now on and in this one if it has not imported pyarrow yet (jemalloc
    reads JE_ARROW_MALLOC_CONF when pyarrow loads; a user's own setting is kept).

    By default freed pages go back over the next second or so: at ten million lines the raw lines
    the clean stage had just let go were still resident while the orders were computed, and
    the validator's slices likewise. The peak of all processes: 3.8-4.0 GiB with the default,
    3.4-3.6 GiB without the delay (methods off, 2 alternating runs each; wall time 21.0-22.1 s
    against 22.0-22.1 s).
    """
    os.environ.setdefault("JE_ARROW_MALLOC_CONF", "dirty_decay_ms:0,muzzy_decay_ms:0")


def use_jemalloc() -> None:
    """Have Arrow allocate with jemalloc where the wheel has it (Linux and macOS wheels do).

    Arrow's default, mimalloc, touches fresh memory so slowly on some virtual machines that reading
    ten million lines took 5.9 s against 1.3 s with jemalloc (the same file, one thread, medians of
    2 fresh processes; with the system allocator 1.6 s). Which allocator holds the bytes changes
    nothing in them.
    """
    import pyarrow as pa

    try:
        pool = pa.jemalloc_memory_pool()
    except NotImplementedError:  # a build without it keeps its default
        return
    if pa.default_memory_pool().backend_name != pool.backend_name:
        pa.set_memory_pool(pool)


def parquet_bytes(df: pd.DataFrame) -> bytes:
    """Serialise without the index; identical frames give identical bytes.

    A frame's `attrs` (a transform's notes for its stage's metrics) are not data: pandas would
    write them into the file's metadata, so they are left out.
    """
    buffer = io.BytesIO()
    if df.attrs:
        df = df.copy(deep=False)
        df.attrs = {}
    df.to_parquet(buffer, index=False, engine="pyarrow", compression=COMPRESSION)
    return buffer.getvalue()


def read_parquet(path: Path) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(path, engine="pyarrow")


def write_json(path: Path, payload: Any) -> None:
    text = json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def link_or_copy(source: Path, target: Path) -> None:
    """Reuse an immutable file of an earlier run without copying its bytes when the disk allows."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        write_bytes_atomic(tmp, source.read_bytes())
    os.replace(tmp, target)


# --- partitioned datasets: a folder of Parquet parts (the dask engine's line-level outputs) ------


def is_dask(frame: Any) -> bool:
    return type(frame).__module__.startswith("dask")


def write_partitioned(frame, folder: Path, also: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Write a dask DataFrame as part-00000.parquet, ... in `folder`, computed by the cluster.

    Written beside the target and renamed into place, so a folder that exists is complete;
    returns each part's file name, sha256 and rows (in partition order), and the dask values
    `also` (any nesting of them), computed in the same pass: partitions both need are made once.
    """
    import shutil

    import dask
    import pyarrow.parquet as pq

    building = folder.with_name(f".{folder.name}.{os.getpid()}.writing")
    shutil.rmtree(building, ignore_errors=True)
    building.parent.mkdir(parents=True, exist_ok=True)
    writing = frame.to_parquet(str(building), write_index=False, compression=COMPRESSION, write_metadata_file=False,
                               name_function=lambda i: f"part-{i:05d}.parquet", compute=False)
    _, computed = dask.compute(writing, also)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(building, folder)
    return [{"file": part.name, "sha256": sha256_file(part), "rows": pq.ParquetFile(part).metadata.num_rows}
            for part in sorted(folder.glob("part-*.parquet"))], computed


def parts_sha256(parts: list[dict[str, Any]]) -> str:
    """The hash of a partitioned dataset: of its parts' names and hashes, in order."""
    return sha256_bytes("".join(f"{p['file']}\t{p['sha256']}\n" for p in parts).encode())
