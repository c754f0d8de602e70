"""An on-disk cache of prepared data (load -> split -> normalize), shared by every process.

Why: a big CSV (MNIST's 60 000 x 784) takes seconds and hundreds of MB to parse, and K worker
processes would each parse it and each hold their own copies of the arrays. Here the prepared
arrays are written once as `.npy` files and memory-mapped read-only (`np.load(mmap_mode="r")`)
by every process: a rerun skips the parse, and K workers share one copy in the page cache.

Layout: `<root>/<entry>/` holds one `.npy` per array and `meta.json` (the object tree that
refers to them, and the data's content digest, `Dataset.digest`). The entry's name hashes what
the result depends on, without reading the data: the params of the stages, the seed, the code
that prepares data, and each source file's path, size, mtime and a hash of its first and last
64 KiB (all of it for a small file). An edited CSV therefore gets a new entry, and the stale
ones of the same file and params are removed.

Safe under concurrency and crashes: an entry is built under a per-entry file lock (K processes
starting together parse once; the others wait and read it), written to a temporary folder and
renamed into place, so no process ever reads half an entry. An entry that does not read back
(a missing or short file, wrong shape or dtype, bad meta) is rebuilt. A cache that cannot be
written (read-only or full disk) costs only the speed-up, with a warning, never the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import json
import logging
import mmap
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from pipeline.locks import file_lock
from pipeline.provenance import version

log = logging.getLogger(__name__)

T = TypeVar("T")
FORMAT = 1  # bump when the layout changes: older entries are then never read
_SAMPLE = 64 * 1024  # bytes hashed at each end of a source file
_PACKAGE = Path(__file__).resolve().parent
_CODE = ("cache.py", "data.py", "stages.py")  # the code whose output is cached
_VERSIONED = ("numpy", "pandas", "scikit-learn")


class CacheMiss(Exception):
    """An entry that is absent, incomplete or from another format: build it (again)."""


def cached(
    root: Path,
    key: Mapping[str, Any],
    files: Sequence[Path],
    build: Callable[[], T],
    *,
    digest: Callable[[T], str] | None = None,
) -> T:
    """`build()`'s result, from the entry for (`key`, `files`) under `root` if there is a valid
    one, else built, stored and read back (so the builder too holds memory-mapped arrays).

    `key` is JSON-able (the params the result depends on); `files` are the existing source files
    `build` reads. The result must be a tree of dataclasses (of pipeline modules), numpy arrays,
    JSON values, tuples, lists and dicts; fields whose name starts with `_` are runtime state
    and are not stored (they get their defaults back). `digest(value)`, the content digest of
    the data, is kept in the entry's meta.json.
    """
    base, name = entry_name(key, files)
    entry = root / name
    with contextlib.suppress(CacheMiss):
        return load(entry)
    created = [d for d in (root, *root.parents) if not d.exists()]  # deepest first
    lock = root / f"{name}.lock"
    with contextlib.ExitStack() as held:
        try:
            root.mkdir(parents=True, exist_ok=True)
            held.enter_context(file_lock(lock))
        except OSError as exc:  # read-only or full disk, no permission: run without the cache
            log.warning("data cache %s not used: %s", root, exc)
            return build()
        with contextlib.suppress(CacheMiss):
            return load(entry)  # another process built it while this one waited
        try:
            value = build()
        except BaseException:  # bad data: leave no trace (no lock file, no new mlruns/)
            lock.unlink(missing_ok=True)
            for folder in created:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty: another process may be using it
            raise
        try:
            store(entry, value, {"digest": digest(value) if digest else None})
            _remove_stale(root, base, name)
            return load(entry)
        except (OSError, TypeError, CacheMiss) as exc:
            log.warning("data cache %s not written: %s", entry, exc)
            return value


def entry_name(key: Mapping[str, Any], files: Sequence[Path]) -> tuple[str, str]:
    """(prefix shared by every version of these params and files, this version's entry name)."""
    paths = [str(Path(f).resolve()) for f in files]
    base = _hash(json.dumps({"key": key, "files": paths}, sort_keys=True, default=str))[:16]
    versions = {n: version(n) for n in _VERSIONED}
    code = {f: _hash((_PACKAGE / f).read_bytes()) for f in _CODE}
    signature = {"format": FORMAT, "versions": versions, "code": code, "files": []}
    for f in files:
        stat = Path(f).stat()
        signature["files"].append([stat.st_size, stat.st_mtime_ns, _sample_hash(Path(f))])
    return base, f"{base}-{_hash(json.dumps(signature, sort_keys=True))[:16]}"


def _sample_hash(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        h.update(f.read(_SAMPLE))
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size > _SAMPLE:
            f.seek(max(_SAMPLE, size - _SAMPLE))
            h.update(f.read(_SAMPLE))
    return h.hexdigest()


def _hash(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# -- writing ----------------------------------------------------------------------------------


def store(entry: Path, value: Any, info: Mapping[str, Any] | None = None) -> None:
    """Write `value` as a complete entry at `entry`: into a temporary folder beside it, files
    synced, then renamed into place (an invalid entry already there is replaced). `info` goes
    into meta.json as it is."""
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the entry from the store's other users
        arrays: dict[int, str] = {}
        meta = {"format": FORMAT, **(info or {}), "tree": _encode(value, tmp, arrays)}
        _write_synced(tmp / "meta.json", json.dumps(meta).encode())
        if entry.exists():  # invalid (load failed): move it aside, then replace it
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=entry.parent))
            os.replace(entry, trash / "entry")
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(tmp, entry)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _encode(value: Any, folder: Path, arrays: dict[int, str]) -> Any:
    if isinstance(value, np.ndarray):
        if id(value) not in arrays:  # the same array (e.g. reuse_all splits) is stored once
            name = f"a{len(arrays)}.npy"
            with (folder / name).open("wb") as f:
                np.save(f, np.ascontiguousarray(value), allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            arrays[id(value)] = name
        name = arrays[id(value)]
        return {"array": name, "dtype": value.dtype.str, "shape": list(value.shape)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        if not cls.__module__.startswith("pipeline."):
            raise TypeError(f"cannot cache a {cls.__module__}.{cls.__qualname__}")
        fields = {
            f.name: _encode(getattr(value, f.name), folder, arrays)
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
        return {"dataclass": f"{cls.__module__}:{cls.__qualname__}", "fields": fields}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, folder, arrays) for v in value]}
    if isinstance(value, list):
        return {"list": [_encode(v, folder, arrays) for v in value]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, folder, arrays) for k, v in value.items()}}
    if isinstance(value, np.generic):
        return {"value": value.item()}
    if value is None or isinstance(value, bool | int | float | str):
        return {"value": value}
    raise TypeError(f"cannot cache a {type(value).__name__}")


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _remove_stale(root: Path, base: str, keep: str) -> None:
    """Older entries of the same params and files (the file changed since). A process still
    using one keeps its memory maps: the files go when the last map closes."""
    for old in root.glob(f"{base}-*"):
        if old.name != keep:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)  # its lock file


def release(*arrays: np.ndarray) -> None:
    """Give the pages of memory-mapped arrays that this process has read once (e.g. to hash
    them) back to the page cache: they leave the process's RSS but stay cached and shared, and
    a later read maps them in again. Arrays not mapped from a file are left alone."""
    for array in arrays:
        mapped = getattr(array, "_mmap", None)  # np.memmap's mapping (np.load(mmap_mode=...))
        if isinstance(mapped, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
            with contextlib.suppress(OSError, ValueError):  # closed, or madvise unsupported
                mapped.madvise(mmap.MADV_DONTNEED)


# -- reading ----------------------------------------------------------------------------------


def load(entry: Path) -> Any:
    """The entry's value with every array memory-mapped read-only; CacheMiss if it is absent
    or does not read back exactly as written."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("format") != FORMAT:
            raise CacheMiss(f"{entry}: format {meta.get('format')}, not {FORMAT}")
        return _decode(meta["tree"], entry, {})
    except CacheMiss:
        raise
    except FileNotFoundError:
        raise CacheMiss(f"{entry}: absent or incomplete") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        log.warning("data cache %s is unreadable (%s); rebuilding it", entry, exc)
        raise CacheMiss(str(exc)) from None


def _decode(node: Mapping[str, Any], folder: Path, arrays: dict[str, np.ndarray]) -> Any:
    if "array" in node:
        name = node["array"]
        if name not in arrays:
            if Path(name).name != name:
                raise ValueError(f"bad array name {name!r}")
            array = np.load(folder / name, mmap_mode="r", allow_pickle=False)
            if array.dtype.str != node["dtype"] or list(array.shape) != node["shape"]:
                raise ValueError(f"{name}: {array.dtype.str} {array.shape} is not as written")
            arrays[name] = array
        return arrays[name]
    if "dataclass" in node:
        module, _, qualname = node["dataclass"].partition(":")
        if not module.startswith("pipeline."):
            raise ValueError(f"refusing class {node['dataclass']!r}")
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        fields = {k: _decode(v, folder, arrays) for k, v in node["fields"].items()}
        return cls(**fields)
    if "tuple" in node:
        return tuple(_decode(v, folder, arrays) for v in node["tuple"])
    if "list" in node:
        return [_decode(v, folder, arrays) for v in node["list"]]
    if "dict" in node:
        return {k: _decode(v, folder, arrays) for k, v in node["dict"].items()}
    return node["value"]
