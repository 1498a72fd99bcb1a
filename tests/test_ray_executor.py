"""`headscope run --executor ray`: the local executor's results, through a Ray instance on the loopback
address (started for this module and stopped after it); a worker killed mid-unit, a killed driver,
an error inside a unit, and Ray missing.

Only Ray's own process handling is real here: the models are the tiny/planted testbeds, so each run
takes seconds after the workers' start-up (importing torch and transformers in a fresh process).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import ray

from headscope.cli import main
from headscope.errors import InputError
from headscope.experiments import run_experiment
from headscope.experiments.worker import WORKER_DELAY_ENV, load_options
from headscope.results import HeadScores

pytestmark = [
    pytest.mark.filterwarnings("ignore:no massive activation:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.timeout(600),
]

# Planted model: an analyzer, a per-layer scan, attribution patching screened by an exact scan (an item
# that reads another item of its unit) and an evaluation ranked by the scan (items that read a unit).
SPEC = """
name: planted_ray
model: testing:planted
figures: [html]
data:
  rep: {generator: repeated_tokens, seq_len: 8, n_prompts: 3, seed: 0}
  copy: {generator: repeat_samples, n: 4, seq_len: 12, answer_len: 3, seed: 1}
units:
  - name: sinks
    analyze: attention-sinks
    params: {epsilon: 0.3}
  - name: zero
    scan: zero
    metric: kl_last
    data: rep
  - name: screened
    scan: {kind: mean, method: atp+exact, top_k: 3}
    metric: loss
    data: rep
  - name: acc
    evaluate: needle_accuracy
    data: copy
    intervention: {kind: uniform_attention}
    conditions:
      - {name: top, top_k: [0, 1, 2], from: zero}
      - {name: random, random: [3], seeds: [0, 1, 2], from: zero, exclude_top: 2}
      - {name: induction, heads: [[1, 3]]}
"""
N_ITEMS = 1 + 2 + 2 + 7


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """`ray start --head` on 127.0.0.1 (2 CPUs), this process connected as the driver; stopped after."""
    port = _free_port()
    temp = tmp_path_factory.mktemp("ray")
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    ray_bin = Path(sys.executable).with_name("ray")
    start = [
        str(ray_bin),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--num-cpus=2",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
        "--object-store-memory=200000000",
    ]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    address = f"127.0.0.1:{port}"
    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    try:
        yield address
    finally:
        ray.shutdown()
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


def _spec(tmp_path, text=SPEC) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("local")
    return run_experiment(_spec(base), base / "out", progress=False)


def _records(out: Path) -> dict:
    """Every result of a run folder, timings dropped (they differ between any two runs)."""
    recs = {}
    for p in sorted((out / "units").rglob("*")):
        rel = str(p.relative_to(out))
        if p.suffix == ".parquet":
            recs[rel] = HeadScores.load(p).values
        elif p.suffix == ".json" and "figure" not in p.name:
            doc = json.loads(p.read_text())
            doc.pop("seconds", None)
            recs[rel] = doc
    for p in sorted((out / "results").glob("*.parquet")):
        recs[str(p.relative_to(out))] = pd.read_parquet(p)
    return recs


def _same_results(got_out: Path, want_out: Path) -> None:
    got, want = _records(got_out), _records(want_out)
    assert got.keys() == want.keys()
    for key in want:
        if isinstance(want[key], np.ndarray):
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0, err_msg=key)
        elif isinstance(want[key], pd.DataFrame):
            pd.testing.assert_frame_equal(got[key], want[key], atol=1e-6)
        else:
            assert got[key] == want[key], key
    # Summaries byte for byte, apart from the finish time and the run's timing and counts (a resumed run
    # computed fewer items; the tests check those counts themselves).
    a, b = (json.loads((o / "summary.json").read_text()) for o in (got_out, want_out))
    for doc in (a, b):
        doc.pop("finished")
        doc["run"] = doc["run"]["items"]
    assert a == b
    strip = lambda t: [line for line in t.splitlines() if not line.startswith("Model: ")]
    assert strip((got_out / "summary.md").read_text()) == strip((want_out / "summary.md").read_text())


def _markers(out: Path) -> dict:
    """{marker path: (mtime_ns, sha256)} of every finished item (scan/analyze parquet, evaluate json)."""
    found = (
        [
            p
            for p in (out / "units").rglob("*")
            if p.is_file() and not p.name.startswith(".") and (p.suffix == ".parquet" or p.parent.name == "acc")
        ]
        if (out / "units").is_dir()
        else []
    )
    return {p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest()) for p in found}


def test_ray_run_equals_local_run(cluster, local_run, tmp_path):
    out = run_experiment(_spec(tmp_path), tmp_path / "out", executor="ray", address=cluster, workers=2, progress=False)
    _same_results(out, local_run)
    log = json.loads((out / "executor.json").read_text())
    assert len(log["items"]) == N_ITEMS and {w["name"] for w in log["workers"]} == {"w0", "w1"}
    assert {i["worker"] for i in log["items"].values()} <= {"w0", "w1"}
    # The screened scan verified exactly its AtP top-3, and those values are the exact scan's.
    screened = HeadScores.load(out / "results" / "screened.parquet")
    assert screened.params["method"] == "atp+exact" and len(screened.params["verified"]) == 3


def _worker_running_an_item():
    """The pid of a Ray actor process executing Worker.run (Ray titles it ray::Worker.run)."""
    for p in psutil.process_iter(["cmdline"]):
        if "ray::Worker.run" in " ".join(p.info["cmdline"] or []):
            return p.pid
    return None


def test_worker_killed_mid_unit_is_replaced_and_its_unit_rerun(cluster, local_run, tmp_path, monkeypatch):
    # Each item sleeps 1.5 s in the worker after computing and before returning: killed then, the item
    # was computed but never written, so it must be rerun on the restarted actor, and written once.
    monkeypatch.setenv(WORKER_DELAY_ENV, "1.5")
    killed = []

    def killer():
        deadline = time.time() + 300
        while not killed and time.time() < deadline:
            pid = _worker_running_an_item()
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            time.sleep(0.05)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    out = run_experiment(_spec(tmp_path), tmp_path / "out", executor="ray", address=cluster, workers=2, progress=False)
    thread.join(timeout=5)
    assert killed, "no worker was seen running an item"
    log = json.loads((out / "executor.json").read_text())
    assert len(log["items"]) == N_ITEMS  # every item once
    assert killed[0] not in {w["pid"] for w in log["workers"]}  # its actor runs in a new process
    _same_results(out, local_run)


def test_killed_driver_resumes_and_keeps_finished_units(cluster, local_run, tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "out"
    env = {**os.environ, WORKER_DELAY_ENV: "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "headscope.cli",
        "run",
        str(spec),
        "--out",
        str(out),
        "--executor",
        "ray",
        "--address",
        cluster,
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while len(_markers(out)) < 3 and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = _markers(out)
    assert 3 <= len(before) < N_ITEMS and not (out / "summary.json").exists()

    out = run_experiment(spec, out, executor="ray", address=cluster, workers=2, progress=False)
    after = _markers(out)
    assert {p: after[p] for p in before} == before  # finished units untouched (same time, same bytes)
    assert len(after) == N_ITEMS
    run = json.loads((out / "summary.json").read_text())["run"]
    assert run["reused"] == len(before) and run["computed_now"] == N_ITEMS - len(before)
    _same_results(out, local_run)


def test_error_inside_a_unit_names_it_and_keeps_finished_units(cluster, tmp_path):
    # The second unit asks for positions past the prompts' end: found only when its item runs.
    text = (
        SPEC.split("  - name: screened")[0]
        + """  - name: late
    scan: zero
    metric: kl_last
    data: rep
    params: {positions: [20, 30]}
"""
    )
    text = text.replace("  - name: zero\n", "  - name: zero\n    layers: [0]\n")
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"units\[2\] \(late\), layers 0-0: positions \[20, 30\] start past"):
        run_experiment(_spec(tmp_path, text), out, executor="ray", address=cluster, workers=1, progress=False)
    done = {p.relative_to(out).as_posix() for p in _markers(out)}
    assert {"units/sinks/scores.parquet", "units/zero/layers_000-000.parquet"} <= done
    assert not (out / "summary.json").exists()


def test_without_ray_the_executor_fails_at_once_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    spec = _spec(tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--executor", "ray"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'headscope[ray]'" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_ray_options_need_the_ray_executor(tmp_path, capsys):
    spec = _spec(tmp_path)
    assert main(["run", str(spec), "--out", str(tmp_path / "out"), "--workers", "2"]) == 2
    assert "--workers are options of --executor ray" in capsys.readouterr().err
    with pytest.raises(InputError, match="options of executor='ray'"):
        run_experiment(spec, tmp_path / "out2", workers=2)


def test_gpu_placement_options():
    assert load_options(0, 0) == {} and load_options(1, 0) == {}  # no CUDA: CPU
    assert load_options(1, 4) == {"device": "cuda"} and load_options(0.5, 1) == {"device": "cuda"}
    assert load_options(2, 4) == {"n_devices": 2} and load_options(8, 4) == {"n_devices": 4}
