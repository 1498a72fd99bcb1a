"""The results folder of one experiment, and the rules that make a run resumable.

    OUT/
      spec.yaml          the spec as given (byte for byte)
      state.json         spec hash, headscope version, when the folder was started
      units/<unit>/...   one file per finished unit of work (the file's presence = done)
      results/<unit>.{parquet,json}   combined per-unit results (rebuilt from units/ at the end)
      figures/<unit>.{html,png,svg}
      summary.md, summary.json
      executor.json      Ray runs only: which worker ran which unit of work, and how long it took

Every file is written with `atomic_write` (temp file + rename), so a killed run leaves either
the whole file or none; a unit's marker file is written last, after its side files. A folder
holds one spec: a different spec hash is refused (use `fresh=True` / `--fresh`, or another
folder). An OS-level lock keeps two runs from writing into one folder at once.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import json
import shutil
from pathlib import Path
from typing import TextIO

from .._version import __version__
from ..errors import InputError
from ..fileio import atomic_write, jsonable

OWNED = ("spec.yaml", "state.json", "units", "results", "figures", "summary.md", "summary.json", "executor.json")


class Folder:
    """Paths and atomic writes under one root: the results folder, or a Ray worker's scratch copy of it."""

    def __init__(self, root):
        # Absolute: executors pass paths under unit_dir() back to the write methods, and a relative
        # root joined with a relative path under itself would nest the folder in itself.
        self.root = Path(root).absolute()

    def unit_dir(self, unit_name: str) -> Path:
        return self.root / "units" / unit_name

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def write_bytes(self, rel, data: bytes) -> Path:
        return atomic_write(self.root / rel, lambda p: p.write_bytes(data))

    def write_text(self, rel, text: str) -> Path:
        return atomic_write(self.root / rel, lambda p: p.write_text(text, encoding="utf-8"))

    def write_json(self, rel, doc) -> Path:
        text = json.dumps(jsonable(doc), indent=1, allow_nan=True, ensure_ascii=False)
        return self.write_text(rel, text + "\n")

    def write_table(self, rel, df) -> Path:
        """A pandas table as Parquet (atomically)."""
        return atomic_write(self.root / rel, lambda p: df.to_parquet(p, index=False))

    def read_json(self, rel):
        return json.loads((self.root / rel).read_text(encoding="utf-8"))

    def files(self, *subdirs: str) -> dict[str, bytes]:
        """{path relative to the root: contents} of every finished file under `subdirs` (temp files of a
        write in progress left out)."""
        out = {}
        for sub in subdirs:
            top = self.root / sub
            found = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
            for p in found:
                if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".tmp")):
                    out[p.relative_to(self.root).as_posix()] = p.read_bytes()
        return out


class Store(Folder):
    def __init__(self, out, spec, *, fresh: bool = False):
        super().__init__(out)
        self.spec = spec
        self._lock: TextIO | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        self._acquire_lock()
        state_file = self.root / "state.json"
        if fresh:
            self._clear()
        elif state_file.is_file():
            try:
                old = json.loads(state_file.read_text(encoding="utf-8")).get("spec_hash")
            except (OSError, ValueError):
                old = None
            if old != spec.hash and not self._has_units():
                self._clear()  # nothing finished yet (e.g. the last attempt failed validation): adopt this spec
            elif old != spec.hash:
                self.close()
                raise InputError(
                    f"{self.root} holds results of a different spec (hash {str(old)[:12]} != {spec.hash[:12]}): its "
                    "finished units would not match. Run with --fresh to discard them, or choose another --out folder"
                )
        elif any(p.name != ".lock" for p in self.root.iterdir()):
            self.close()
            raise InputError(
                f"{self.root} is not empty and is not a headscope run folder (no state.json): "
                "choose another --out folder"
            )
        if not state_file.is_file():
            now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
            self.write_json(
                "state.json",
                {"spec_hash": spec.hash, "spec_name": spec.name, "started": now, "headscope_version": __version__},
            )
        self.write_text("spec.yaml", spec.text)
        self._remove_stale_temps()

    # ---- locking and cleanup ------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        # flock is released by the kernel when the process dies, so a SIGKILLed run never blocks a resume.
        lock = open(self.root / ".lock", "w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise InputError(
                f"another headscope run is writing to {self.root}; wait for it or use another --out"
            ) from None
        self._lock = lock

    def close(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def _clear(self) -> None:
        for name in OWNED:  # only what a run writes: a stray user file in the folder survives --fresh
            p = self.root / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()

    def _has_units(self) -> bool:
        units = self.root / "units"
        return units.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in units.rglob("*"))

    def _remove_stale_temps(self) -> None:
        # A killed run can leave atomic_write's ".<name>.*.tmp" files behind; they are never results.
        for sub in ("units", "results", "figures"):
            for tmp in (self.root / sub).rglob(".*.tmp") if (self.root / sub).is_dir() else ():
                tmp.unlink(missing_ok=True)
