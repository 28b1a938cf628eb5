"""torchrun on the CPU: 2 gloo ranks train like 1 process, only rank 0 writes, faults end cleanly.

The multi-process tests start real ranks with `python -m torch.distributed.run --standalone`
(tests/distributed_worker.py is what each rank runs).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from distributed_worker import METHODS, step_gradients
from test_end_to_end import TINY

from gatedssl import distributed
from gatedssl.config import PretrainConfig, resolve, validate
from gatedssl.data.augment import recipe
from gatedssl.data.pipelines import make_views
from gatedssl.factory import build_objective
from gatedssl.models.syncbn import convert_sync_bn
from gatedssl.training import pretrain

WORKER = Path(__file__).with_name("distributed_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def torchrun(*args, nproc=2, restarts=0, timeout=240, env=None):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    command += [f"--max-restarts={restarts}", str(WORKER), *map(str, args)]
    environ = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    start = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environ)
    return proc, time.monotonic() - start


# ---------------------------------------------------------------- the global-draw rule, in one process


def _images(kind: str, folder):
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    if kind == "held":
        return images
    from torchvision.io import write_png

    from gatedssl.data.streaming import ImageFiles

    paths = [str(folder / f"{i}.png") for i in range(len(images))]
    for image, path in zip(images, paths):
        write_png(image, path)
    return ImageFiles(paths, 32, workers=0)


@pytest.mark.parametrize("kind", ["held", "streamed"])
def test_ranks_see_their_contiguous_share_of_the_one_process_views(kind, tmp_path):
    images = _images(kind, tmp_path)
    augment = recipe(32, (0.5,) * 3, (0.25,) * 3, blur_p=0.5)

    def views(rank, world):
        torch.manual_seed(0)
        with distributed.simulate(rank, world):
            pipeline = make_views("device", images, (augment, augment), 16, torch.device("cpu"))
            return list(pipeline.epoch(pipeline.new_order()))

    one, ranks = views(0, 1), [views(r, 2) for r in (0, 1)]
    assert len(one) == 2 and all(len(r) == 2 for r in ranks)
    for step, (x1, x2) in enumerate(one):
        assert ranks[0][step][0].shape[0] == 8
        assert torch.equal(x1, torch.cat([r[step][0] for r in ranks])), "view 1 of a step is not the ranks' views joined"
        assert torch.equal(x2, torch.cat([r[step][1] for r in ranks]))


def test_gate_noise_is_drawn_for_the_global_batch():
    from gatedssl.models.gate import logistic_noise

    like = torch.zeros(4, 6)
    torch.manual_seed(0)
    whole = logistic_noise(torch.zeros(8, 6))
    parts = []
    for rank in (0, 1):
        torch.manual_seed(0)
        with distributed.simulate(rank, 2):
            parts.append(logistic_noise(like))
    assert torch.equal(whole, torch.cat(parts))


# ---------------------------------------------------------------- settings


def test_batch_not_dividing_by_the_world_size_is_one_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    problems = validate(resolve(PretrainConfig(batch_size=128)))
    assert len(problems) == 1 and "does not divide by the 3 ranks" in problems[0] and "e.g. 126" in problems[0]
    assert not validate(resolve(PretrainConfig(batch_size=129)))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU's error")
def test_sync_bn_on_the_cpu_is_one_error():
    problems = validate(resolve(PretrainConfig(sync_bn=True)))
    assert len(problems) == 1 and "CUDA only" in problems[0]


def test_sync_bn_converts_every_bn_and_keeps_the_weights_and_the_sub_networks():
    objective = build_objective(resolve(PretrainConfig(mode="slimmable", widths=[0.5, 1.0])))
    objective.eval()
    keys, x = list(objective.state_dict()), torch.randn(2, 3, 32, 32)
    before = {s: objective.backbone(x, s).features for s in objective.subnets}
    convert_sync_bn(objective)
    norms = [m for m in objective.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, torch.nn.SyncBatchNorm) for m in norms)
    assert list(objective.state_dict()) == keys, "a sync-BN run's checkpoint must load into a plain network"
    assert all(torch.equal(before[s], objective.backbone(x, s).features) for s in objective.subnets)


# ---------------------------------------------------------------- 2 gloo ranks


@pytest.fixture(scope="module")
def rank_gradients(tmp_path_factory):
    out = tmp_path_factory.mktemp("grads")
    proc, _ = torchrun("grads", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(out / f"grads_rank{r}.pt", weights_only=True) for r in (0, 1)]


@pytest.mark.parametrize("method", METHODS)
def test_two_ranks_give_the_one_process_gradient(method, rank_gradients):
    """float64, atol 1e-12 of the model's largest gradient entry. The two sides differ only in summation order
    (a conv over 4 images or 8, the all-reduce adding two halves): measured 1e-15 of that scale on this CPU
    (BENCHMARKS.md), against 0.1 to 20 times it when the all-reduce or the gather is left out."""
    one = step_gradients(method)
    scale = max(g.abs().max().item() for g in one.values())
    for rank in (0, 1):
        ddp = rank_gradients[rank][(method, "ddp")]
        assert ddp.keys() == one.keys()
        for name, g in one.items():
            torch.testing.assert_close(ddp[name], g, rtol=0, atol=1e-12 * scale, msg=f"{method} {name}")

    def worst(variant):
        got = rank_gradients[0][(method, variant)]
        return max((got[n] - g).abs().max().item() for n, g in one.items()) / scale

    assert worst("no_allreduce") > 1e-2, "the test must see a missing gradient all-reduce"
    assert worst("no_gather") > 1e-2, "the test must see a missing embedding gather"


def test_a_gate_warm_up_step_leaves_the_gates_without_gradient_on_every_rank(rank_gradients):
    """In the warm-up the gates are not used: under DDP they must keep no gradient (not a zero one, which
    weight decay and momentum would turn into a step), and the rest must match one process."""
    one = step_gradients("vicreg", "warmup")
    assert not any(".gate." in name for name in one)
    for rank in (0, 1):
        got = rank_gradients[rank][("vicreg", "warmup")]
        assert got.keys() == one.keys()
        scale = max(g.abs().max().item() for g in one.values())
        assert all(torch.allclose(got[n], g, rtol=0, atol=1e-12 * scale) for n, g in one.items())


@pytest.mark.parametrize("mode", ["dual", "dense", "gated", "slimmable", "posthoc"])
def test_ddp_looks_for_unused_parameters_wherever_a_step_leaves_some(mode):
    """DDP without find_unused_parameters fails at the second step if a step leaves a parameter without
    gradient: one step of every mode and method (and the warm-up) must agree with the trainer's choice."""
    from gatedssl.methods import METHODS
    from gatedssl.training.trainer import leaves_parameters_unused

    for method in METHODS:
        for warmup in (0, 1) if mode in ("dual", "gated") else (0,):
            cfg = resolve(
                PretrainConfig(mode=mode, method=method, width=4, proj_dim=32, epochs=2, gate_warmup_epochs=warmup)
                if mode != "slimmable"
                else PretrainConfig(mode=mode, method=method, width=4, proj_dim=32, widths=[0.25, 0.5, 0.75, 1.0])
            )
            torch.manual_seed(0)
            objective = build_objective(cfg).train()
            objective(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32), 0.5, gates_on=warmup == 0)["loss"].backward()
            unused = [n for n, p in objective.named_parameters() if p.requires_grad and p.grad is None]
            if unused:
                assert leaves_parameters_unused(cfg), f"{mode} {method} warm-up {warmup}: {unused[:3]} get no gradient"


def _args(**kw):
    settings = {**TINY, **kw}
    settings.pop("device")
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


def _weights(run):
    return torch.load(run / "checkpoints/last.pt", weights_only=True)["model"]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ddp") / "run"
    proc, _ = torchrun("train", run, *_args())
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run, proc


def test_only_rank_0_writes_and_each_epoch_is_logged_once(two_rank_run):
    run, proc = two_rank_run
    assert "rank 1 writes: []" in proc.stdout, proc.stdout[-2000:]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert len(list((run / "tb").iterdir())) == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["per_rank_batch"] == 25
    assert (run / "config.yaml").read_text().startswith("# launched with world_size: 2, per_rank_batch: 25")
    ckpt = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_per_rank"]) == 2
    assert torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"]), "every rank draws the same numbers"


def test_a_rank_killed_mid_epoch_is_restarted_by_torchrun_and_ends_with_the_same_weights(two_rank_run, tmp_path):
    run, _ = two_rank_run
    killed = tmp_path / "killed"
    proc, _ = torchrun("train", killed, "--resume=auto", "--kill-rank=1", *_args(), restarts=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from" in proc.stderr and "epoch 2, step 1" in proc.stderr
    a, b = _weights(run), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a), "the restarted run's weights differ from the uninterrupted 2-rank run"


def test_an_error_on_one_rank_ends_every_rank_with_one_line(tmp_path):
    proc, seconds = torchrun("train", tmp_path / "run", "--fail-rank=1", *_args())
    assert proc.returncode != 0 and seconds < 120
    ours = [line for line in proc.stderr.splitlines() if re.match(r"(\[rank\d\]:)?error", line)]
    assert ours == ["error (rank 1): injected failure on this rank only"], proc.stderr[-3000:]
    # the one traceback is torchrun's own report (ChildFailedError), none from a rank
    assert proc.stderr.count("Traceback") == 1 and "ChildFailedError" in proc.stderr.split("Traceback")[1], proc.stderr[-3000:]


def test_sigterm_to_one_rank_checkpoints_every_rank_at_one_step_and_resumes_exactly(two_rank_run, tmp_path, capsys):
    run, _ = two_rank_run
    stopped = tmp_path / "stopped"
    proc, _ = torchrun("train", stopped, "--term-rank=1", *_args())
    assert "exitcode  : 75" in proc.stderr and "exitcode  : 75" in proc.stderr.split("exitcode  : 75", 1)[1], proc.stderr[-3000:]
    assert "stopped by a signal to another rank at epoch 2, step 2" in proc.stderr, proc.stderr[-3000:]
    ckpt = torch.load(stopped / "checkpoints/last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["step"], ckpt["world_size"]) == (1, 2, 2)
    shutil.copytree(stopped, tmp_path / "one")

    proc, _ = torchrun("train", stopped, "--resume", *_args())  # the same world size: exactly the uninterrupted run
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _weights(run), _weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed 2-rank weights differ from the uninterrupted 2-rank run"

    summary = pretrain(PretrainConfig(out=str(tmp_path / "one"), **TINY), resume=True, progress=False)  # one process now
    assert "written by 2 process(es), this run has 1" in capsys.readouterr().err
    assert summary["world_size"] == 1 and summary["per_rank_batch"] == 50


def test_commands_other_than_pretrain_refuse_torchrun_with_one_line(monkeypatch, capsys):
    from gatedssl.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["sweep", "--budgets", "0.3", "--out", "sweep"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only `gatedssl pretrain` runs" in err[0]
    monkeypatch.setenv("RANK", "1")  # the other ranks say nothing: rank 0 has said it
    assert main(["eval", "--checkpoint", "x.pt"]) == 2 and not capsys.readouterr().err.strip()
