"""Data lost or work silently skipped (issue 20, section 3): --overwrite, outputs over inputs, "finished",
eval outside a run folder, sweep folder names, torn .jsonl lines, --resume with the run's own settings."""

import json
import os
import shutil
import signal

import pytest
import torch

from gatedssl.checkpoint import report_out_problems
from gatedssl.cli import main
from gatedssl.config import PretrainConfig
from gatedssl.errors import RunStopped, UserError
from gatedssl.training import pretrain
from gatedssl.training.run_folder import RunPaths, repeated_failure_problem, truncate_metrics

# 100 images, batch 50: two steps per epoch. The stopped run is started with settings other than the defaults
# (budget, seed), so that resuming it without them is the case a user meets.
FLAGS = [
    "--width",
    "8",
    "--proj-dim",
    "64",
    "--batch-size",
    "50",
    "--limit-per-class",
    "10",
    "--checkpoint-every",
    "1",
    "--device",
    "cpu",
    "--quiet",
]
TINY = dict(width=8, proj_dim=64, batch_size=50, limit_per_class=10, checkpoint_every=1, device="cpu")
STOPPED = dict(TINY, epochs=2, budget=0.3, seed=1)


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished run (1 epoch) and one stopped by SIGTERM after its first of 2 epochs (exit 75, checkpoint written)."""
    tmp = tmp_path_factory.mktemp("runs")
    pretrain(PretrainConfig(out=str(tmp / "finished"), epochs=1, **TINY), progress=False)

    def term_after_first_epoch(epoch, step):
        if (epoch, step) == (0, 1):
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunStopped):
        pretrain(PretrainConfig(out=str(tmp / "stopped"), **STOPPED), on_step_end=term_after_first_epoch, progress=False)
    return tmp


def copy_of(runs, name, tmp_path):
    shutil.copytree(runs / name, tmp_path / name)
    return tmp_path / name


def one_error_line(code, err, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


def epoch_of(run) -> int:
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["epoch"]


def metric_epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


# 1. --overwrite removes what gatedssl wrote, nothing else


def test_overwrite_keeps_the_users_own_files_in_the_run_folder(runs, tmp_path):
    run = copy_of(runs, "finished", tmp_path)
    mine = [run / "checkpoints/notes.txt", run / "checkpoints/best_by_hand.pt", run / "analysis.ipynb", run / "tb/my_events.txt"]
    for path in mine:
        path.write_text("the user's own")
    old = sorted(p.name for p in (run / "checkpoints").glob("step_*.pt"))
    tb_old = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert old and tb_old

    def stop_at_first_step(epoch, step):
        raise Interrupt  # the folder has been prepared; nothing of the new run is written yet

    with pytest.raises(Interrupt):
        pretrain(PretrainConfig(out=str(run), epochs=1, **TINY), overwrite=True, on_step_end=stop_at_first_step, progress=False)
    assert all(path.read_text() == "the user's own" for path in mine)
    assert not any((run / "checkpoints" / name).exists() for name in old), "the earlier run's checkpoints are not this one's"
    assert not (run / "checkpoints/last.pt").exists() and not (run / "summary.json").exists() and not (run / "curves.png").exists()
    assert not any(path.exists() for path in tb_old)


@pytest.mark.parametrize("source", ["checkpoints/last.pt", "checkpoints/STEP", "."])
def test_overwrite_of_the_run_that_init_from_reads_is_refused(runs, tmp_path, capsys, source):
    run = copy_of(runs, "finished", tmp_path)
    step = next((run / "checkpoints").glob("step_*.pt")).name
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["pretrain", "--out", str(run), "--overwrite", "--mode", "posthoc", "--init-from", str(run / source.replace("STEP", step))]
    code = main([*argv, "--epochs", "1", *FLAGS])
    one_error_line(code, capsys.readouterr().err, "--init-from", "--overwrite")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


# 2. an output is never an input, nor a file a run needs


@pytest.mark.parametrize(
    "command, out",
    [
        ("export", "checkpoints/last.pt"),  # the checkpoint it reads
        ("export", "checkpoints/STEP"),  # the same file by its other name (last.pt is a hard link)
        ("export", "checkpoints/step_99999999.pt"),  # a name the run's checkpoints have
        ("export", "summary.json"),
        ("export", "config.yaml"),
        ("eval", "checkpoints/last.pt"),
        ("eval", "config.yaml"),
        ("eval", "metrics.jsonl"),
    ],
)
def test_an_output_over_an_input_or_a_run_file_is_refused_before_anything_is_written(runs, tmp_path, capsys, command, out):
    run = copy_of(runs, "finished", tmp_path)
    step = next((run / "checkpoints").glob("step_*.pt")).name
    target = run / out.replace("STEP", step)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code = main([command, "--checkpoint", str(run / "checkpoints/last.pt"), "--out", str(target)])
    one_error_line(code, capsys.readouterr().err, "--out")
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_an_output_over_the_checkpoint_through_a_symbolic_link_is_refused(runs, tmp_path, capsys):
    run = copy_of(runs, "finished", tmp_path)
    link = tmp_path / "link.pt"
    link.symlink_to(run / "checkpoints/last.pt")
    before = (run / "checkpoints/last.pt").read_bytes()
    code = main(["export", "--checkpoint", str(link), "--out", str(run / "checkpoints/last.pt")])
    one_error_line(code, capsys.readouterr().err, "which this command reads")
    code = main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--out", str(link)])
    one_error_line(code, capsys.readouterr().err, "which this command reads")
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_eval_into_another_runs_summary_is_refused(runs, tmp_path, capsys):
    run, other = copy_of(runs, "finished", tmp_path), copy_of(runs, "stopped", tmp_path)
    code = main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--out", str(other / "summary.json")])
    one_error_line(code, capsys.readouterr().err, "summary.json")
    assert not (other / "summary.json").exists()


def test_a_report_inside_a_run_folder_is_refused(runs, tmp_path):
    run = copy_of(runs, "finished", tmp_path)
    assert report_out_problems(run) and report_out_problems(run / "checkpoints") and report_out_problems(run / "report")
    assert report_out_problems(tmp_path / "report") == []


# 3. "finished" means the training finished


def test_resume_auto_after_eval_of_a_stopped_run_trains_the_rest(runs, tmp_path, capsys):
    run = copy_of(runs, "stopped", tmp_path)
    assert epoch_of(run) == 1
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt")]) == 0
    assert (run / "summary.json").exists()
    code = main(["pretrain", "--out", str(run), "--quiet"])  # not "already holds a finished run"
    one_error_line(code, capsys.readouterr().err, "unfinished run")
    assert main(["pretrain", "--out", str(run), "--resume", "auto", "--quiet"]) == 0
    assert "nothing to do" not in capsys.readouterr().err
    assert epoch_of(run) == 2 and metric_epochs(run) == [1, 2]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_sweep_resumes_a_stopped_run_that_eval_gave_a_summary(runs, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    run = sweep / "b0.3"
    shutil.copytree(runs / "stopped", run)
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt")]) == 0
    capsys.readouterr()
    code = main(
        ["sweep", "--budgets", "0.3", "--no-baseline", "--out", str(sweep), "--epochs", "2", "--seed", "1", "--probe", "none", *FLAGS]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "b0.3: resuming" in err and "complete, skipped" not in err
    assert epoch_of(run) == 2


# 4. eval of a checkpoint outside a run folder writes beside it


def test_eval_of_a_copied_checkpoint_writes_beside_it_and_says_so(runs, tmp_path, capsys):
    (tmp_path / "x").mkdir()
    copy = tmp_path / "x/model.pt"
    shutil.copy(runs / "finished/checkpoints/last.pt", copy)
    assert main(["eval", "--checkpoint", str(copy)]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "x/model.summary.json").exists() and "beside the checkpoint" in out
    assert not (tmp_path / "summary.json").exists()

    run = copy_of(runs, "finished", tmp_path)
    (run / "summary.json").unlink()
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt")]) == 0
    assert (run / "summary.json").exists() and "the run's summary" in capsys.readouterr().out


# 5. sweep folder names


def test_sweep_budgets_that_share_a_folder_name_are_refused_before_anything_trains(tmp_path, capsys):
    code = main(["sweep", "--budgets", "0.3", "0.3000001", "--no-baseline", "--out", str(tmp_path / "sweep"), "--epochs", "1", *FLAGS])
    one_error_line(code, capsys.readouterr().err, "0.3000001", "b0.3")
    assert not (tmp_path / "sweep").exists()


# 6. torn lines in the .jsonl files


TORN = '{"epoch": 3, "lo'


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1, "loss": 2.0}\n{"epoch": 2, "loss": 1.5}\nnot json\n[1, 2]\n' + TORN)
    truncate_metrics(path, 1)
    assert path.read_text() == '{"epoch": 1, "loss": 2.0}\n'


def test_a_torn_failures_line_is_skipped(tmp_path):
    paths = RunPaths(tmp_path)
    paths.checkpoints.mkdir()
    failure = json.dumps({"time": 1.0, "exit_code": 2, "error": "UserError: x", "from": None})
    paths.failures.write_text(failure + "\n" + failure + "\n" + TORN)
    with pytest.raises(UserError, match="the last two attempts failed the same way"):
        repeated_failure_problem(paths)  # the torn line is no attempt: the two before it are the last two
    paths.failures.write_text(failure + '\n"a string"\n' + TORN)
    repeated_failure_problem(paths)


def test_resume_auto_after_a_crash_mid_write_continues(runs, tmp_path, capsys):
    run = copy_of(runs, "stopped", tmp_path)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(TORN)
    (run / "failures.jsonl").write_text(TORN)
    assert main(["pretrain", "--out", str(run), "--resume", "auto", "--quiet"]) == 0, capsys.readouterr().err
    assert metric_epochs(run) == [1, 2]


# 7. --resume continues with the run's own settings


def test_resume_without_the_flags_continues_with_the_runs_own_settings(runs, tmp_path, capsys):
    run = copy_of(runs, "stopped", tmp_path)
    assert main(["pretrain", "--out", str(run), "--resume", "--quiet"]) == 0, capsys.readouterr().err
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["epoch"] == 2 and (state["config"]["budget"], state["config"]["seed"]) == (0.3, 1)


def test_resume_with_a_flag_that_differs_names_it_in_one_line(runs, tmp_path, capsys):
    run = copy_of(runs, "stopped", tmp_path)
    before = (run / "checkpoints/last.pt").read_bytes()
    code = main(["pretrain", "--out", str(run), "--resume", "--budget", "0.7", "--seed", "1", "--epochs", "2", "--quiet"])
    err = capsys.readouterr().err
    one_error_line(code, err, "settings differ", "--budget 0.7 (the run has 0.3)")
    assert "--seed" not in err and "--epochs" not in err  # given, but as the run has them
    assert (run / "checkpoints/last.pt").read_bytes() == before


def test_eval_of_an_embedded_run_with_a_data_dir_is_one_line(runs, tmp_path, capsys):
    """The embedded data reads no folder: a --data-dir given to eval would be ignored, so it is refused, naming what to drop."""
    code = main(
        ["eval", "--checkpoint", str(runs / "finished/checkpoints/last.pt"), "--data-dir", str(tmp_path), "--out", str(tmp_path / "s.json")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: --data-dir:") and "drop --data-dir" in err[0]
    assert not (tmp_path / "s.json").exists()
