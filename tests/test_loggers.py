"""--logger: TensorBoard as before, MLflow in a local file store, W&B offline, none; a resume continues the backend's run;
a missing package or an unknown name is one `error:` line before anything is written. Short real runs on the CPU."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli_error_lines

from gatedssl.cli import main
from gatedssl.config import PretrainConfig, upgrade_stored, validate
from gatedssl.config.checks import LOGGERS, logger_names
from gatedssl.errors import UserError
from gatedssl.training import loggers, pretrain
from gatedssl.training.plan import MAY_CHANGE_ON_RESUME

TINY = dict(width=8, proj_dim=64, epochs=2, batch_size=50, limit_per_class=20, device="cpu")
FLAGS = ["--width", "8", "--proj-dim", "64", "--epochs", "2", "--batch-size", "50", "--limit-per-class", "20", "--device", "cpu"]


@pytest.fixture(autouse=True)
def quiet_backends(monkeypatch, tmp_path):
    """No tracking server, no W&B account, nothing written outside tmp_path; the process environment is restored after."""
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_EXPERIMENT_NAME",
        "MLFLOW_ALLOW_FILE_STORE",
        "WANDB_PROJECT",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
    ):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "wandb-home"
    env = dict(
        WANDB_MODE="offline", WANDB_SILENT="true", WANDB_CONSOLE="off", WANDB_CONFIG_DIR=home, WANDB_CACHE_DIR=home, WANDB_DATA_DIR=home
    )
    for name, value in env.items():
        monkeypatch.setenv(name, str(value))


def run_tiny(out: Path, **kw) -> dict:
    return pretrain(PretrainConfig(out=str(out), **{**TINY, **kw}), progress=False)


def epochs_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def old_tags(record: dict) -> dict[str, float]:
    """What the trainer wrote to TensorBoard before --logger existed, spelled out again here."""
    density = {f"density/block{i}": d for i, d in enumerate(record["density"])}
    knn = {"knn/" + k.removeprefix("knn_"): v for k, v in record.items() if k.startswith("knn_")}
    return {**{"train/" + k: v for k, v in record.items() if k not in ("epoch", "density") and not k.startswith("knn_")}, **density, **knn}


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_same_as_metrics(logged: dict[str, list[tuple[int, float]]], run: Path) -> None:
    """Every epoch's every scalar of metrics.jsonl, at step = epoch, and nothing else."""
    records = epochs_of(run)
    assert set(logged) == set(old_tags(records[0])) and {"train/loss", "knn/gated", "density/block7"} <= set(logged)
    for tag, points in logged.items():
        assert [step for step, _ in points] == [r["epoch"] for r in records], tag
        assert [v for _, v in points] == pytest.approx([old_tags(r)[tag] for r in records], rel=1e-6), tag


def mlflow_store(run: Path):
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'gatedssl[mlflow]' (the test extra has it)")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("gatedssl")
    return client, client.search_runs([experiment.experiment_id])


def mlflow_history(client, run_id: str, run: Path) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(m.step, m.value) for m in client.get_metric_history(run_id, tag)] for tag in old_tags(epochs_of(run)[0])}


def test_tensorboard_is_the_default_and_keeps_its_tags(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, eval_every=1)
    assert_same_as_metrics(tensorboard_scalars(run), run)
    assert not any((run / name).exists() for name in ("mlruns", "wandb", "loggers.json"))


def test_tensorboard_and_mlflow_together(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'gatedssl[mlflow]' (the test extra has it)")
    run = tmp_path / "run"
    summary = run_tiny(run, eval_every=1, logger="tensorboard,mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # to read the file store back
    assert_same_as_metrics(tensorboard_scalars(run), run)

    client, runs = mlflow_store(run)
    assert len(runs) == 1 and runs[0].info.run_name == "run" and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    assert json.loads((run / "loggers.json").read_text())["mlflow"]["run_id"] == run_id
    assert_same_as_metrics(mlflow_history(client, run_id, run), run)
    settings = yaml.safe_load((run / "config.yaml").read_text())
    assert runs[0].data.params == {k: str(v) for k, v in settings.items()}  # the resolved settings, as the run saved them
    final = runs[0].data.metrics
    for name in ("dense", "gated"):
        assert final[f"final/{name}/knn_top1"] == pytest.approx(summary[name]["knn_top1"])
        assert final[f"final/{name}/macs_ratio"] == pytest.approx(summary[name]["macs_ratio"])
    assert final["final/training_compute/executed_flops"] == pytest.approx(summary["training_compute"]["executed_flops"])
    artifact = client.download_artifacts(run_id, "summary.json", str(tmp_path))
    assert json.loads(Path(artifact).read_text()) == json.loads((run / "summary.json").read_text())


class Interrupt(Exception):
    pass


def test_a_resumed_run_continues_its_mlflow_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'gatedssl[mlflow]' (the test extra has it)")
    run = tmp_path / "run"

    def stop_after_two(epoch):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        pretrain(
            PretrainConfig(out=str(run), **{**TINY, "epochs": 3}, checkpoint_every=1, logger="mlflow"),
            on_epoch_end=stop_after_two,
            progress=False,
        )
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    client, runs = mlflow_store(run)
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    first = runs[0].info.run_id

    # --logger may change on --resume (what is watched, not what is trained): TensorBoard joins, MLflow continues
    assert main(["pretrain", "--out", str(run), "--resume", "--logger", "tensorboard,mlflow", "--quiet"]) == 0
    client, runs = mlflow_store(run)
    assert [r.info.run_id for r in runs] == [first] and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first, "train/loss")] == [1, 2, 3]
    assert runs[0].data.params["logger"] == "mlflow" and runs[0].data.tags["resumed.logger"] == "tensorboard,mlflow"
    assert "final/gated/knn_top1" in runs[0].data.metrics
    assert [step for step, _ in tensorboard_scalars(run)["train/loss"]] == [3]


def test_mlflow_tracking_uri_from_the_environment(tmp_path, monkeypatch):
    pytest.importorskip("mlflow", reason="mlflow is not installed: pip install 'gatedssl[mlflow]' (the test extra has it)")
    from mlflow.tracking import MlflowClient

    root, store = tmp_path / "run", (tmp_path / "team-store").as_uri()
    root.mkdir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "team")
    with loggers.RunLoggers(PretrainConfig(out=str(root), logger="mlflow"), root, resume=False) as run_loggers:
        run_loggers.start()
        run_loggers.log_epoch({"epoch": 1, "loss": 2.5, "density": [0.5, 0.25]})
    client = MlflowClient(tracking_uri=store)
    (found,) = client.search_runs([client.get_experiment_by_name("team").experiment_id])
    assert found.data.metrics == {"train/loss": 2.5, "density/block0": 0.5, "density/block1": 0.25}
    assert json.loads((root / "loggers.json").read_text())["mlflow"]["tracking_uri"] == store
    assert not (root / "mlruns").exists()


def wandb_records(path: Path):
    """The records of a W&B run file (.wandb): LevelDB's log format (32 KiB blocks, 7-byte record headers) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a record is complete
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            chunks = b""
            yield record


def key_of(item) -> str:
    return item.key or "/".join(item.nested_key)  # newer W&B versions keep every key as a path


def wandb_run(run: Path) -> tuple[str, list[dict], dict, dict]:
    """The offline run's id, its history rows, its summary and its config, read back from its files."""
    (folder,) = (run / "wandb").glob("offline-run-*")
    (file,) = folder.glob("run-*.wandb")
    history, summary, config, run_id = [], {}, {}, None
    for record in wandb_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id, name = record.run.run_id, record.run.display_name
            config = {key_of(item): json.loads(item.value_json) for item in record.run.config.update}
            assert name == run.name
        elif kind == "history":
            history.append({key_of(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            summary.update({key_of(item): json.loads(item.value_json) for item in record.summary.update})
    return run_id, history, summary, config


def test_wandb_offline_writes_its_run_with_the_scalars(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'gatedssl[wandb]' (the test extra has it)")
    run = tmp_path / "run"
    summary = run_tiny(run, eval_every=1, logger="wandb")
    run_id, history, final, config = wandb_run(run)
    assert json.loads((run / "loggers.json").read_text())["wandb"]["id"] == run_id
    logged = {tag: [(row["epoch"], row[tag]) for row in history] for tag in old_tags(epochs_of(run)[0])}
    assert_same_as_metrics(logged, run)
    assert config["logger"] == "wandb" and config["width"] == 8 and config["out"] == str(run)
    assert final["final/gated/knn_top1"] == pytest.approx(summary["gated"]["knn_top1"])
    assert final["final/dense/macs_ratio"] == pytest.approx(1.0)
    assert not (run / "tb").exists()


def test_wandb_resume_keeps_the_run_id(tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed: pip install 'gatedssl[wandb]' (the test extra has it)")
    root = tmp_path / "run"
    root.mkdir()
    cfg = PretrainConfig(out=str(root), logger="wandb")
    ids = []
    for resume in (False, True):
        with loggers.RunLoggers(cfg, root, resume=resume) as run_loggers:
            run_loggers.start()
            run_loggers.log_epoch({"epoch": 1 + resume, "loss": 1.0})
            ids.append(run_loggers.started[0].run.id)
    assert ids[0] == ids[1] == json.loads((root / "loggers.json").read_text())["wandb"]["id"]


def test_logger_none_writes_no_tensorboard_folder(tmp_path):
    run = tmp_path / "run"
    run_tiny(run, epochs=1, logger="none")
    assert [r["epoch"] for r in epochs_of(run)] == [1]
    assert not any((run / name).exists() for name in ("tb", "mlruns", "wandb", "loggers.json"))


@pytest.mark.parametrize("package", ["mlflow", "wandb"])
def test_a_missing_package_is_one_error_line_before_anything_is_written(tmp_path, capsys, monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # what `import mlflow` does without the extra: ImportError
    out = tmp_path / "run"
    lines = cli_error_lines(
        capsys, ["pretrain", "--out", str(out), "--logger", f"tensorboard,{package}", *FLAGS], f"pip install 'gatedssl[{package}]'"
    )
    assert len([line for line in lines if "logger" in line]) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "value, needle",
    [
        ("tensorboard,comet", "logger: 'comet' is not one of tensorboard, mlflow, wandb, none"),
        ("none,mlflow", "logger: none logs to metrics.jsonl only and cannot be combined with mlflow"),
        ("", "logger: '' is not one of"),
    ],
)
def test_unknown_logger_names_are_one_error_line(tmp_path, capsys, value, needle):
    out = tmp_path / "run"
    lines = cli_error_lines(capsys, ["pretrain", "--out", str(out), "--logger", value, *FLAGS], needle)
    assert len([line for line in lines if "logger" in line]) == 1
    assert not out.exists()


def test_names_settings_and_older_runs():
    assert set(loggers.BACKENDS) == set(LOGGERS) - {"none"}
    assert logger_names("tensorboard, mlflow,tensorboard") == ["tensorboard", "mlflow"] and logger_names("none") == []
    assert PretrainConfig().logger == "tensorboard" and not [p for p in validate(PretrainConfig(logger="tensorboard")) if "logger" in p]
    assert upgrade_stored({"dataset": "embedded"})["logger"] == "tensorboard"  # older runs logged to TensorBoard
    assert upgrade_stored({"dataset": "embedded", "logger": "none"})["logger"] == "none"
    assert "logger" in MAY_CHANGE_ON_RESUME


def test_a_backend_that_fails_mid_run_warns_once_and_the_others_go_on(tmp_path, monkeypatch):
    calls, warnings = [], []

    class Broken(loggers.Logger):
        name = "tensorboard"

        def log_epoch(self, record):
            calls.append(record["epoch"])
            raise OSError("disk full")

    monkeypatch.setitem(loggers.BACKENDS, "tensorboard", Broken)
    with loggers.RunLoggers(PretrainConfig(logger="tensorboard"), tmp_path, resume=False, warn=warnings.append) as run_loggers:
        run_loggers.start()
        for epoch in (1, 2):
            run_loggers.log_epoch({"epoch": epoch, "loss": 1.0})
    assert calls == [1] and len(warnings) == 1 and "tensorboard failed (OSError: disk full)" in warnings[0]


def test_a_backend_that_cannot_import_at_start_is_a_user_error(tmp_path, monkeypatch):
    def no_module(self, previous):
        raise ImportError("No module named 'mlflow'")

    monkeypatch.setattr(loggers.MLflowLogger, "start", no_module)
    with pytest.raises(UserError, match=r"logger: mlflow cannot be imported .*pip install 'gatedssl\[mlflow\]'"):
        loggers.RunLoggers(PretrainConfig(logger="mlflow"), tmp_path, resume=False).start()


def test_only_rank_zero_logs(tmp_path):
    run_loggers = loggers.RunLoggers(PretrainConfig(logger="tensorboard,mlflow,wandb"), tmp_path, resume=False, enabled=False)
    run_loggers.start()
    run_loggers.log_epoch({"epoch": 1, "loss": 1.0})
    run_loggers.close()
    assert list(tmp_path.iterdir()) == []
