"""Fault injection: kills, signals, failed writes, corrupt checkpoints and non-finite losses."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import NEW_IN_FORMAT_2

from gatedssl import checkpoint as checkpoint_module
from gatedssl.config import PretrainConfig
from gatedssl.errors import EXIT_NONFINITE, EXIT_SIGNAL, RunStopped, UserError
from gatedssl.methods import JointObjective
from gatedssl.training import pretrain

TINY = dict(width=8, proj_dim=64, epochs=4, batch_size=50, limit_per_class=20, checkpoint_every=1, device="cpu")
CLI_TINY = [
    "--width",
    "8",
    "--proj-dim",
    "64",
    "--epochs",
    "4",
    "--batch-size",
    "50",
    "--limit-per-class",
    "20",
    "--checkpoint-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
]
SRC = str(Path(__file__).resolve().parents[1] / "src")


def tiny(tmp_path, name, **kw):
    return PretrainConfig(out=str(tmp_path / name), **{**TINY, **kw})


def weights(run: Path) -> dict:
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_no_corrupt_files(run: Path):
    assert not list((run / "checkpoints").glob(".*tmp*")), "temporary files left behind"
    for path in (run / "checkpoints").glob("*.pt"):
        torch.load(path, weights_only=True)  # every checkpoint kept is readable


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    tmp = tmp_path_factory.mktemp("ref")
    pretrain(tiny(tmp, "ref"), progress=False)
    return weights(tmp / "ref")


def test_sigterm_mid_epoch_checkpoints_and_resume_is_exact(tmp_path, reference):
    def term_at(epoch, step):
        if (epoch, step) == (1, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunStopped) as stopped:
        pretrain(tiny(tmp_path, "run"), on_step_end=term_at, progress=False)
    assert stopped.value.exit_code == EXIT_SIGNAL
    assert "SIGTERM" in str(stopped.value) and "epoch 2, step 2" in str(stopped.value)
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    pretrain(tiny(tmp_path, "run"), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "run"), reference)
    assert_no_corrupt_files(tmp_path / "run")


def _cli(out: Path, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "gatedssl", "pretrain", "--out", str(out), *CLI_TINY, *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _epochs_logged(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def test_sigkill_at_random_steps_then_resume_gives_the_uninterrupted_weights(tmp_path):
    """Three kills, each at a random moment after a new epoch is logged; 8 epochs leave room for all three."""
    pretrain(tiny(tmp_path, "ref", epochs=8), progress=False)
    reference = weights(tmp_path / "ref")
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills, attempts = 0, 0
    while not (out / "summary.json").exists():
        attempts += 1
        assert attempts < 12, "the run never finished"
        has_checkpoint = (out / "checkpoints/last.pt").exists()
        proc = _cli(out, "--epochs", "8", *(["--resume"] if has_checkpoint else ["--overwrite"]))
        if kills < 3:
            start = _epochs_logged(out)
            deadline = time.time() + 60
            while _epochs_logged(out) <= start and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 0.4))  # somewhere inside the next epoch, or a checkpoint write
            if proc.poll() is None:
                proc.kill()
                kills += 1
        _, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, -signal.SIGKILL), err
    assert kills == 3
    assert_same_weights(weights(out), reference)
    assert_no_corrupt_files(out)


def test_sigterm_to_the_cli_exits_with_the_resume_code(tmp_path):
    out = tmp_path / "term"
    proc = _cli(out, "--epochs", "40")
    deadline = time.time() + 60
    while _epochs_logged(out) < 1 and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_SIGNAL, err
    assert "stopped by SIGTERM" in err and "--resume" in err and "Traceback" not in err


def test_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, fh, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            fh.write(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, fh, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(UserError, match=r"could not write checkpoint .* \(No space left on device\); the previous checkpoint is intact"):
        pretrain(tiny(tmp_path, "run"), progress=False)
    monkeypatch.undo()
    state = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 1
    assert_no_corrupt_files(tmp_path / "run")


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, reference):
    def stop_after_three(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(tmp_path, "run"), on_epoch_end=stop_after_three, progress=False)
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # truncated (last.pt and the newest step file are one file)
    messages = []
    pretrain(tiny(tmp_path, "run"), resume=True, progress=False, log=messages.append)
    assert any("cannot be read" in m and "falling back to" in m for m in messages), messages
    assert any("resuming from" in m and "epoch 3" in m for m in messages), messages
    assert_same_weights(weights(tmp_path / "run"), reference)


def _nan_on_call(monkeypatch, bad_calls):
    real_forward = JointObjective.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        terms = real_forward(self, *args, **kwargs)
        if args[0].device.type == "meta":  # the FLOP count's step on the meta device (training/compute.py) is no training step
            return terms
        calls["n"] += 1
        if calls["n"] in bad_calls:
            terms["loss"] = terms["loss"] * float("nan")
            terms["ssl"] = terms["ssl"] * float("nan")
        return terms

    monkeypatch.setattr(JointObjective, "forward", forward)


def test_nonfinite_loss_stops_the_run_naming_step_and_terms(tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, {6})  # 4 steps per epoch: epoch 2, step 2
    with pytest.raises(RunStopped) as stopped:
        pretrain(tiny(tmp_path, "run"), progress=False)
    message = str(stopped.value)
    assert stopped.value.exit_code == EXIT_NONFINITE
    assert "non-finite loss at epoch 2, step 2" in message and "ssl=nan" in message and "budget=" in message
    assert torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)["epoch"] == 1, "the last good checkpoint stays"


def test_skip_nonfinite_skips_a_bounded_number_of_batches(tmp_path, monkeypatch):
    _nan_on_call(monkeypatch, {3})
    messages = []
    summary = pretrain(tiny(tmp_path, "ok", skip_nonfinite=1), progress=False, log=messages.append)
    assert any("batch skipped (1 of 1 allowed)" in m for m in messages)
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "ok").values() if v.is_floating_point())
    assert summary["epochs"] == 4
    _nan_on_call(monkeypatch, {3, 5})
    with pytest.raises(RunStopped, match="more than 1 batches"):
        pretrain(tiny(tmp_path, "too_many", skip_nonfinite=1), progress=False, log=messages.append)


def test_resume_of_a_format_1_run_continues_as_0_1_0_after_the_defaults_changed(tmp_path, reference, monkeypatch):
    """A run written by gatedssl 0.1.0 has no recipe keys; resumed with the same command after the default recipe
    became `reference`, it must go on with 0.1.0's choices and end with the uninterrupted run's weights."""
    import yaml

    from gatedssl.config import defaults as config  # resolve() looks the default recipe up here

    def stop_after_two(epoch):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(tmp_path, "run"), on_epoch_end=stop_after_two, progress=False)
    for path in (tmp_path / "run/checkpoints").glob("step_*.pt"):  # make it what 0.1.0 wrote
        state = torch.load(path, weights_only=True)
        state["format_version"] = 1
        state["config"] = {k: v for k, v in state["config"].items() if k not in NEW_IN_FORMAT_2}
        torch.save(state, path)
    stored = yaml.safe_load((tmp_path / "run/config.yaml").read_text())
    (tmp_path / "run/config.yaml").write_text(yaml.safe_dump({k: v for k, v in stored.items() if k not in NEW_IN_FORMAT_2}))
    monkeypatch.setattr(config, "default_recipe", lambda dataset: "reference")
    assert config.resolve(tiny(tmp_path, "x")).stem_padding == 2  # a fresh run now gets the reference's choices
    pretrain(tiny(tmp_path, "run"), resume=True, progress=False)
    assert_same_weights(weights(tmp_path / "run"), reference)
