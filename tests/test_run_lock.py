"""One run folder, one writer; --resume auto for requeues and restarts; --checkpoint-minutes."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest
import torch
from test_end_to_end import Interrupt, tiny  # the short run the end-to-end tests use

from gatedssl.cli import main
from gatedssl.errors import EXIT_NONFINITE, RunStopped, UserError
from gatedssl.methods import JointObjective
from gatedssl.training import pretrain
from gatedssl.training.lock import RunLock


def _lock(folder, pid, host, age_s=0.0):
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    (folder / ".lock").write_text(json.dumps({"pid": pid, "host": host, "started": now - age_s, "heartbeat": now - age_s}))


@pytest.fixture
def live_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_a_folder_held_by_a_live_run_is_refused_with_one_line(tmp_path, capsys, live_process):
    _lock(tmp_path / "run", live_process, socket.gethostname())
    code = main(["pretrain", "--out", str(tmp_path / "run"), "--epochs", "1", "--quiet"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert f"pid {live_process} on host {socket.gethostname()}" in lines[0]
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"], "nothing written into the held folder"


@pytest.mark.parametrize(
    "holder",
    [
        {"host": "elsewhere", "age_s": 600},  # another host's lease whose heartbeat stopped
        {"host": socket.gethostname(), "age_s": 0, "dead": True},  # this host, a process that is gone
    ],
)
def test_a_stale_lock_is_taken_over(tmp_path, holder):
    if holder.get("dead"):
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        pid = proc.pid
    else:
        pid = 1
    _lock(tmp_path / "run", pid, holder["host"], holder["age_s"])
    seen = []
    pretrain(tiny(tmp_path, epochs=1), on_epoch_end=lambda e: seen.append(json.loads((tmp_path / "run/.lock").read_text())), progress=False)
    assert seen and seen[0]["pid"] == os.getpid(), "the run held the folder while it trained"
    assert not (tmp_path / "run/.lock").exists(), "and let it go at the end"


@pytest.mark.parametrize(
    "record",
    [
        {"pid": "x", "host": "elsewhere", "heartbeat": 0.0},
        {"pid": 1, "host": "elsewhere", "heartbeat": "soon"},
        {"pid": 1, "host": "elsewhere", "heartbeat": [1]},
        {"pid": 1e400, "host": socket.gethostname(), "heartbeat": 1e400},
    ],
)
def test_a_lock_with_fields_of_the_wrong_type_is_no_live_holder(tmp_path, record):
    """No live run writes such a lock (its own are whole, atomically): a damaged one must not stop the folder's next run."""
    (tmp_path / "run").mkdir()
    (tmp_path / "run/.lock").write_text(json.dumps(record))
    assert RunLock(tmp_path / "run").holder() is None
    with RunLock(tmp_path / "run"):
        assert json.loads((tmp_path / "run/.lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run/.lock").exists()


def test_the_heartbeat_renews_the_lease(tmp_path):
    with RunLock(tmp_path / "run", heartbeat_s=0.05) as lock:
        first = json.loads(lock.path.read_text())["heartbeat"]
        time.sleep(0.3)
        assert json.loads(lock.path.read_text())["heartbeat"] > first
        with pytest.raises(UserError, match="held by a live run"):  # another process's view of it
            other = RunLock(tmp_path / "run")
            other.me = {"pid": os.getpid() + 1, "host": "another-host"}
            other.__enter__()
    assert not lock.path.exists()


def test_a_restart_of_the_same_job_takes_over_its_earlier_attempts_lock_at_once(tmp_path, monkeypatch):
    """Rank 0 of a torchrun restart or a Slurm requeue may run on another host than the attempt before:
    that attempt's fresh lease (a pid no one here can check) must not block the job it belongs to."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-7")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    (tmp_path / "run").mkdir()
    with RunLock(tmp_path / "run", heartbeat_s=60):
        record = json.loads((tmp_path / "run/.lock").read_text())
    record.update(host="another-host", heartbeat=time.time())  # attempt 0's rank 0 ran elsewhere and just died
    (tmp_path / "run/.lock").write_text(json.dumps(record))
    assert RunLock(tmp_path / "run").holder() is not None, "the same attempt (or a stranger) still sees a live lease"
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert RunLock(tmp_path / "run").holder() is None
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "another-job")
    assert RunLock(tmp_path / "run").holder() is not None, "another job's live lease is still refused"


def test_resume_auto_starts_continues_and_leaves_a_finished_run_alone(tmp_path):
    full = pretrain(tiny(tmp_path, "full"), progress=False)

    def stop_after_two(epoch):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(tiny(tmp_path, "cut"), resume="auto", on_epoch_end=stop_after_two, progress=False)  # nothing to resume: starts
    resumed = pretrain(tiny(tmp_path, "cut"), resume="auto", progress=False)
    assert resumed["dense"]["knn_top1"] == full["dense"]["knn_top1"] and resumed["gated"]["knn_top1"] == full["gated"]["knn_top1"]
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut").rglob("*")}
    again = pretrain(tiny(tmp_path, "cut"), resume="auto", progress=False)
    assert again == resumed and {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cut").rglob("*")} == before


def test_resume_auto_stops_a_run_that_fails_the_same_way_twice(tmp_path, monkeypatch):
    real_forward = JointObjective.forward

    def forward(self, x1, x2, progress, *args, **kwargs):
        terms = real_forward(self, x1, x2, progress, *args, **kwargs)
        if x1.device.type != "meta" and abs(progress - (1 + 1 / 4) / 3) < 1e-9:  # epoch 2, step 2 (4 steps per epoch), every attempt
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(JointObjective, "forward", forward)
    for _attempt in range(2):
        with pytest.raises(RunStopped) as stopped:
            pretrain(tiny(tmp_path), resume="auto", progress=False)
        assert stopped.value.exit_code == EXIT_NONFINITE
    failures = [json.loads(line) for line in (tmp_path / "run/failures.jsonl").read_text().splitlines()]
    assert len(failures) == 2 and failures[0]["error"] == failures[1]["error"]
    with pytest.raises(UserError, match="failed the same way"):
        pretrain(tiny(tmp_path), resume="auto", progress=False)


def test_checkpoint_minutes_saves_mid_epoch_and_resumes_exactly(tmp_path):
    full = pretrain(tiny(tmp_path, "full", checkpoint_every=100), progress=False)

    def stop_at(epoch, step):
        if (epoch, step) == (1, 2):
            raise Interrupt

    cfg = tiny(tmp_path, "cut", checkpoint_every=100, checkpoint_minutes=1e-9)  # every step
    with pytest.raises(Interrupt):
        pretrain(cfg, on_step_end=stop_at, progress=False)
    state = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2), "the last mid-epoch checkpoint is the step before the crash"
    pretrain(cfg, resume=True, progress=False)
    a = torch.load(tmp_path / "full/checkpoints/last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert full["gated"]["knn_top1"] == json.loads((tmp_path / "cut/summary.json").read_text())["gated"]["knn_top1"]


def test_a_run_that_got_further_is_tried_again(tmp_path):
    """The repeated-failure stop looks at where the attempts started: a newer checkpoint (the cause fixed) clears it."""
    from gatedssl.training.run_folder import RunPaths, record_failure, repeated_failure_problem

    paths = RunPaths(tmp_path / "run")
    paths.checkpoints.mkdir(parents=True)
    (paths.root / "config.yaml").write_text("{}")
    (paths.checkpoints / "step_00000004.pt").write_bytes(b"")
    record_failure(paths, 3, "non-finite loss at epoch 2, step 2")
    record_failure(paths, 3, "non-finite loss at epoch 2, step 2")
    with pytest.raises(UserError, match="failed the same way"):
        repeated_failure_problem(paths)
    (paths.checkpoints / "step_00000012.pt").write_bytes(b"")  # a later attempt (plain --resume, after a fix) got further
    repeated_failure_problem(paths)
