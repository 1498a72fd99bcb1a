"""Run one benchmark mode in its own process and report what happened, an out-of-memory kill included.

A mode that runs out of memory is a result ("out of memory"), not a crash of the benchmark: the kernel's
OOM killer ends the child with SIGKILL, and a capped address space (`max_gb`) makes PyTorch raise
instead. Either way the parent gets a row saying so, with the limit that applied.
"""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
import time

OOM_MARKERS = ("MemoryError", "not enough memory", "DefaultCPUAllocator: can't allocate", "out of memory")


def _cap(max_gb: float | None):
    if max_gb is None:
        return None
    limit = int(max_gb * 2**30)

    def preexec():  # in the child, before Python starts: a hard cap on its address space
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


def run_mode(mode: str, argv: list[str], *, max_gb: float | None = None, timeout_s: float | None = None) -> dict:
    """Run `python argv...` (which prints one JSON result as its last stdout line) and return that result,
    or {"mode", "status": "out of memory" | "timed out" | "failed", "detail"}; "ok" rows keep their fields."""
    try:
        proc = subprocess.run(
            [sys.executable, *argv], capture_output=True, text=True, timeout=timeout_s, preexec_fn=_cap(max_gb)
        )
    except subprocess.TimeoutExpired:
        return {"mode": mode, "status": "timed out", "detail": f"over {timeout_s:g} s"}
    limit = f"limit {max_gb:g} GB" if max_gb is not None else "machine memory"
    if proc.returncode == 0:
        lines = proc.stdout.strip().splitlines()
        return (
            {"status": "ok", **json.loads(lines[-1])}
            if lines
            else {"mode": mode, "status": "failed", "detail": "no result printed"}
        )
    if proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        return {"mode": mode, "status": "out of memory", "detail": f"killed by SIGKILL ({limit})"}
    tail = (proc.stderr.strip().splitlines() or ["(no stderr)"])[-1]
    if any(marker in proc.stderr for marker in OOM_MARKERS):
        return {"mode": mode, "status": "out of memory", "detail": f"{tail[:160]} ({limit})"}
    return {"mode": mode, "status": "failed", "detail": f"exit {proc.returncode}: {tail[:200]}"}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field))


def time_and_peak(run, repeats: int) -> tuple[float, float]:
    """(best seconds, smallest peak MB) of `run()` over `repeats` calls, in this process (call it in the
    mode's child, after loading and a warm-up). Peak = growth of the peak RSS during the call: the mark
    is reset to the current RSS first (Linux /proc/self/clear_refs)."""
    times, peaks = [], []
    for _ in range(repeats):
        base = _rss_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        start = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - start)
        peaks.append(_rss_kb("VmHWM") - base)
        del out
    return min(times), min(peaks) / 1024
