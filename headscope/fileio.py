"""Small file helpers shared by results and (later) experiment stores: atomic writes, JSON encoding."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# Read once at import: os.umask can only be queried by setting it, which is racy in threads.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> Path:
    """Call `write(tmp_path)` on a temp file next to `path`, then os.replace it into place.

    Same directory so os.replace is an atomic rename (no cross-device copy); on any failure the
    temp file is removed and an existing `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; saved results should be shareable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached_json(path: str | os.PathLike, compute: Callable[[], Any]) -> Any:
    """A resumable step of a study: reuse the finished result at `path`, else compute it and write it
    atomically (an interrupted run never leaves a half-written result behind)."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    atomic_write(path, lambda t: t.write_text(json.dumps(value, indent=1)))
    return value


def jsonable(x: Any) -> Any:
    """Normalise params to plain JSON types up front, so provenance round-trips exactly."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in (sorted(x, key=repr) if isinstance(x, (set, frozenset)) else x)]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    return str(x)  # paths, dtypes, enums: keep something readable rather than failing the save


def encode_nan(arr: np.ndarray) -> list:
    # NaN -> null keeps the JSON standard; +-inf stay floats (Python's json reads Infinity back).
    if arr.dtype.kind != "f":
        return arr.tolist()
    out = arr.astype(object)
    out[np.isnan(arr)] = None
    return out.tolist()


def _rows(x: Any, ind: int) -> str:
    # One innermost row per line: a 32x32 grid stays ~32 readable lines instead of 1024.
    if isinstance(x, list) and x and all(isinstance(e, list) for e in x):
        pad = " " * (ind + 1)
        return "[\n" + ",\n".join(pad + _rows(e, ind + 1) for e in x) + "\n" + " " * ind + "]"
    return json.dumps(x, allow_nan=True, ensure_ascii=False)


def dump_rows_json(doc: dict) -> str:
    def one(k, v):
        if k in ("values", "tokens"):
            return _rows(v, 1)
        if k in ("dims", "shape"):
            return json.dumps(v)
        return json.dumps(v, indent=1, allow_nan=True, ensure_ascii=False).replace("\n", "\n ")

    parts = [f" {json.dumps(k)}: {one(k, v)}" for k, v in doc.items()]
    return "{\n" + ",\n".join(parts) + "\n}\n"
