"""The benchmarks' mode runner reports an out-of-memory mode as a row, never as a crash of the benchmark."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _harness import run_mode


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "mode.py"
    path.write_text(body)
    return str(path)


def test_a_result_is_passed_through(tmp_path):
    row = run_mode(
        "ok", [_script(tmp_path, 'import json; print("log line"); print(json.dumps({"mode": "ok", "x": 1}))')]
    )
    assert row == {"status": "ok", "mode": "ok", "x": 1}


def test_an_allocation_past_the_cap_is_out_of_memory(tmp_path):
    # 2 GB of zeros under a 1 GB address-space cap: MemoryError in the child
    row = run_mode("big", [_script(tmp_path, "x = bytearray(2 * 2**30)\n")], max_gb=1.0)
    assert row["status"] == "out of memory" and "limit 1 GB" in row["detail"]


def test_a_kill_by_the_oom_killer_is_out_of_memory(tmp_path):
    row = run_mode("killed", [_script(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")])
    assert row["status"] == "out of memory" and "SIGKILL" in row["detail"]


def test_other_failures_say_what_failed(tmp_path):
    row = run_mode("bad", [_script(tmp_path, "raise ValueError('broken input')\n")])
    assert row["status"] == "failed" and "broken input" in row["detail"]
    assert run_mode("slow", [_script(tmp_path, "import time; time.sleep(5)\n")], timeout_s=0.5)["status"] == "timed out"
