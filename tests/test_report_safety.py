"""`headscope report` off the main path: every input checked before the first step, a folder that is not
headscope's left alone, an unwritable folder one clear error, Ctrl-C one line with the resume command."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from headscope.cli import main

CLI = [sys.executable, "-m", "headscope.cli"]


def test_empty_prompts_fail_before_any_step(tmp_path, capsys):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    out = tmp_path / "rep"
    start = time.monotonic()
    assert main(["report", "--model", "testing:tiny", "--prompts", str(empty), "--out", str(out), "--no-static"]) == 2
    err = capsys.readouterr().err
    assert "holds no prompts" in err and "Traceback" not in err
    assert not (out / "scores").exists()  # no step ran, no model was loaded
    assert time.monotonic() - start < 10


def test_a_folder_with_foreign_files_is_refused_and_they_survive(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "report.html").write_text("my own page")
    (out / "notes.txt").write_text("keep me")
    assert (
        main(["report", "--model", "testing:tiny", "--out", str(out), "--no-static", "--only", "attention-sinks"]) == 2
    )
    err = capsys.readouterr().err
    assert "holds files headscope did not write" in err and "--force" in err
    assert (out / "report.html").read_text() == "my own page" and not (out / "scores").exists()
    assert (
        main(
            [
                "report",
                "--model",
                "testing:tiny",
                "--out",
                str(out),
                "--no-static",
                "--only",
                "attention-sinks",
                "--force",
            ]
        )
        == 0
    )
    assert (out / "notes.txt").read_text() == "keep me"  # forced: only the report's own files are written
    assert "Head atlas" in (out / "report.html").read_text()
    # headscope's own folder (its marker) is reused without --force
    assert (
        main(["report", "--model", "testing:tiny", "--out", str(out), "--no-static", "--only", "attention-sinks"]) == 0
    )


def test_unwritable_folder_is_one_clear_error(tmp_path, capsys):
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses everyone
        out = Path("/sys/headscope-report-test")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = locked / "rep"
    assert main(["report", "--model", "testing:tiny", "--out", str(out), "--no-static"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"headscope: error: cannot write the report into {out}") and "Traceback" not in err


def test_ctrl_c_prints_one_line_and_the_resume_command(tmp_path):
    out = tmp_path / "rep"
    args = ["report", "--model", "testing:tiny", "--out", str(out), "--no-static", "--fresh"]
    env = {**os.environ, "HEADSCOPE_STEP_DELAY_S": "30"}  # the run stays inside its first step gap
    proc = subprocess.Popen(CLI + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    steps = out / "scores" / "steps"
    deadline = time.monotonic() + 300
    while not (steps.is_dir() and any(steps.glob("*.json"))):
        assert proc.poll() is None and time.monotonic() < deadline, "the report ended before its first step was saved"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("headscope: interrupted; 1 finished step(s) are saved")
    resume = last.split("Resume with: ", 1)[1]
    assert resume.startswith("headscope report") and "--fresh" not in resume and str(out) in resume
    done = subprocess.run(CLI + resume.split()[1:], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reused from" in done.stderr + done.stdout and (out / "report.html").is_file()
