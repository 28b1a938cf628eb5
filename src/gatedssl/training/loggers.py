"""Where a run's scalars go besides metrics.jsonl: TensorBoard, MLflow, W&B (`--logger`, comma-separated for several).

Every backend gets the same scalars under the same names (train/<term>, density/block<i>, knn/<pass>) and the final
summary's numbers (final/<pass>/knn_top1, ...). A resumed run continues the backend's own run: the ids are kept in
RUN/loggers.json. The packages load only when their backend starts, so a team that uses none of them installs none.
Only rank 0 logs; metrics.jsonl stays the record the reports read, so a backend that fails mid-run is dropped with
one warning instead of stopping the training."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..config import PretrainConfig
from ..config.checks import logger_names
from ..errors import EXIT_SIGNAL, RunStopped, UserError

STATE_FILE = "loggers.json"  # the backends' run ids: what a resume continues


def scalars(record: dict) -> dict[str, float]:
    """An epoch's record (metrics.jsonl's line) as the scalars every backend logs, under TensorBoard's tags."""
    out = {}
    for key, value in record.items():
        if key == "density":
            out.update({f"density/block{i}": d for i, d in enumerate(value)})
        elif key.startswith("knn_"):
            out[f"knn/{key[4:]}"] = value
        elif key != "epoch":
            out[f"train/{key}"] = value
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float))}


def summary_scalars(summary: dict) -> dict[str, float]:
    """The final summary's numbers worth comparing runs by: each pass's kNN, MACs and probe, the training compute."""
    out = {}
    for name in summary.get("subnets", []):
        res = summary.get(name, {})
        out.update({f"final/{name}/{key}": res.get(key) for key in ("knn_top1", "macs", "macs_ratio")})
        out[f"final/{name}/probe_top1"] = (res.get("probe") or {}).get("top1")
    compute = summary.get("training_compute") or {}
    for part in (compute, compute.get("total") or {}):
        prefix = "final/training_compute/" + ("total/" if part is not compute else "")
        out.update({prefix + key: part.get(key) for key in ("executed_flops", "mask_flops", "seconds")})
    out["final/train_seconds"] = summary.get("train_seconds")
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Logger:
    """One backend: start() opens its run (`previous`: what it stored last time, on a resume), returns what to store."""

    name = ""
    extra: str | None = None  # the pip extra that installs it; None: a dependency of gatedssl itself

    def __init__(self, cfg: PretrainConfig, root: Path):
        self.cfg, self.root = cfg, root

    def start(self, previous: dict | None) -> dict:
        return {}

    def log_epoch(self, record: dict) -> None: ...

    def log_summary(self, summary: dict) -> None: ...

    def close(self, status: str) -> None:
        """status: FINISHED, FAILED or KILLED (stopped by a signal; --resume continues)."""


class TensorBoardLogger(Logger):
    name = "tensorboard"

    def start(self, previous: dict | None) -> dict:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.root / "tb"))
        return {}

    def log_epoch(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])

    def close(self, status: str) -> None:
        self.writer.close()


class MLflowLogger(Logger):
    """A run in RUN/mlruns (a local file store) unless MLFLOW_TRACKING_URI names another; the client API, so that
    no global active run is touched (a sweep trains many runs in one process)."""

    name = "mlflow"
    extra = "mlflow"

    def start(self, previous: dict | None) -> dict:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri = os.environ.get("MLFLOW_TRACKING_URI") or None  # None: this run folder's own store
        if uri is None:
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks file stores to opt in
        self.client = client = MlflowClient(tracking_uri=uri or (self.root / "mlruns").absolute().as_uri())
        settings = {k: str(v) for k, v in self.cfg.to_dict().items()}
        run = self._previous_run(previous, uri)
        if run is None:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "gatedssl")
            experiment = client.get_experiment_by_name(name)
            run = client.create_run(experiment.experiment_id if experiment else client.create_experiment(name), run_name=self.root.name)
            given = {}
        else:
            client.update_run(run.info.run_id, status="RUNNING")
            given = run.data.params
        self.run_id = run.info.run_id
        new = [Param(k, v) for k, v in settings.items() if k not in given]
        for i in range(0, len(new), 100):  # MLflow takes at most 100 params a batch
            client.log_batch(self.run_id, params=new[i : i + 100])
        for key in (k for k in given if k in settings and given[k] != settings[k]):  # a param cannot change: a resume's own value as a tag
            client.set_tag(self.run_id, f"resumed.{key}", settings[key])
        return {"run_id": self.run_id, "tracking_uri": uri}

    def _previous_run(self, previous: dict | None, uri: str | None):
        if not previous or previous.get("tracking_uri") != uri or not previous.get("run_id"):
            return None
        try:
            return self.client.get_run(previous["run_id"])
        except Exception:  # deleted, or a store that never held it: a new run
            return None

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def log_epoch(self, record: dict) -> None:
        self._metrics(scalars(record), record["epoch"])

    def log_summary(self, summary: dict) -> None:
        self._metrics(summary_scalars(summary), int(summary.get("epochs") or 0))
        if (self.root / "summary.json").is_file():
            self.client.log_artifact(self.run_id, str(self.root / "summary.json"))

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status)


class WandbLogger(Logger):
    """wandb.init in the run folder; WANDB_MODE (online, offline, disabled), WANDB_PROJECT and the rest come from the
    environment. The x-axis is the epoch (define_metric), so epochs logged again after a resume are kept, not refused."""

    name = "wandb"
    extra = "wandb"

    def start(self, previous: dict | None) -> dict:
        import wandb

        resume = (previous or {}).get("id")
        self.run = wandb.init(
            dir=str(self.root),
            config=self.cfg.to_dict(),
            name=self.root.name,
            project=os.environ.get("WANDB_PROJECT", "gatedssl"),
            id=resume,
            resume="allow" if resume else None,
        )
        self.run.define_metric("epoch")
        for group in ("train", "density", "knn"):
            self.run.define_metric(f"{group}/*", step_metric="epoch")
        return {"id": self.run.id}

    def log_epoch(self, record: dict) -> None:
        self.run.log({"epoch": record["epoch"], **scalars(record)})

    def log_summary(self, summary: dict) -> None:
        self.run.summary.update(summary_scalars(summary))

    def close(self, status: str) -> None:
        self.run.finish(exit_code={"FINISHED": 0, "KILLED": EXIT_SIGNAL}.get(status, 1))


BACKENDS: dict[str, type[Logger]] = {"tensorboard": TensorBoardLogger, "mlflow": MLflowLogger, "wandb": WandbLogger}


class RunLoggers:
    """The run's backends as one: a context the trainer holds for the run's life, start() where the run folder is
    ready (after --overwrite's clean-up), closed with the run's outcome however it ends."""

    def __init__(self, cfg: PretrainConfig, root: Path, resume: bool, enabled: bool = True, warn: Callable[[str], None] = print):
        self.loggers = [BACKENDS[name](cfg, root) for name in logger_names(cfg.logger)] if enabled else []
        self.root, self.resume, self.enabled, self.warn, self.started = root, resume, enabled, warn, []

    def start(self) -> None:
        if self.enabled and not self.resume:  # a new run (--overwrite included) continues none of an earlier one's
            (self.root / STATE_FILE).unlink(missing_ok=True)
        state = self._stored() if self.resume else {}
        for logger in self.loggers:
            try:
                state[logger.name] = logger.start(state.get(logger.name))
            except ImportError as exc:
                if logger.extra is None:  # tensorboard is a dependency, but a broken install must not stop training
                    self.warn(f"warning: logger {logger.name} cannot be imported ({exc}); the run logs to metrics.jsonl only")
                    continue
                self.close("FAILED")
                raise UserError(f"logger: {logger.name} cannot be imported ({exc}); pip install 'gatedssl[{logger.extra}]'") from exc
            except Exception as exc:
                self.close("FAILED")
                raise UserError(f"logger: {logger.name} could not start its run: {type(exc).__name__}: {exc}") from exc
            self.started.append(logger)
        state = {name: ids for name, ids in state.items() if ids}  # TensorBoard has no run to continue
        if state:
            (self.root / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    def _stored(self) -> dict:
        try:
            state = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _each(self, call: Callable[[Logger], None]) -> None:
        for logger in list(self.started):
            try:
                call(logger)
            except Exception as exc:  # the training goes on; metrics.jsonl still has every epoch
                self.started.remove(logger)
                self.warn(f"warning: logger {logger.name} failed ({type(exc).__name__}: {exc}); it logs no more in this run")

    def log_epoch(self, record: dict) -> None:
        self._each(lambda logger: logger.log_epoch(record))

    def log_summary(self, summary: dict) -> None:
        self._each(lambda logger: logger.log_summary(summary))

    def close(self, status: str = "FINISHED") -> None:
        self._each(lambda logger: logger.close(status))
        self.started = []

    def __enter__(self) -> RunLoggers:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        stopped = isinstance(exc, KeyboardInterrupt) or (isinstance(exc, RunStopped) and exc.exit_code == EXIT_SIGNAL)
        self.close("FINISHED" if exc is None else "KILLED" if stopped else "FAILED")
