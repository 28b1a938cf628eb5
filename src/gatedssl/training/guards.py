"""What stops a run early and cleanly: the loss guard and the stop signals.

The loss guard stops a run the step its loss explodes or stops being finite, not an epoch later.

A diverging SSL run climbs through 1e4, 1e8, 1e18 in a few steps before it overflows; by then an
epoch's mean is meaningless and the checkpoint an epoch old. The guard compares each step's loss
with the run's first one on the device and reads the verdict without stalling the step: on the CPU
the read is free, on CUDA the flag is copied to pinned memory without blocking and read once the
copy has landed (a step or so late).
"""

from __future__ import annotations

import signal
import threading

import torch

from .. import distributed

EXPLOSION_FACTOR = 100.0  # a loss this many times its first value (or 1, if larger) has exploded; no
# healthy run of any method here climbs that far: SSL losses fall from their initial value, and
# SimSiam's, BYOL's and the budget terms are bounded by a few units


class LossGuard:
    """Finds the first step whose loss is non-finite or far above the run's first loss, and the terms there."""

    def __init__(self, device: torch.device, reference: float | None = None, factor: float = EXPLOSION_FACTOR):
        self.device, self.factor = device, factor
        self.reference = None if reference is None else torch.tensor(reference, device=device)
        self.first_bad = torch.full((), -1, device=device)
        self.terms: dict[str, torch.Tensor] = {}  # whatever scalar terms the objective returns, at the bad step
        pinned = device.type == "cuda"
        self._seen = torch.full((), -1, dtype=self.first_bad.dtype, pin_memory=pinned)
        self._copied = torch.cuda.Event() if pinned else None

    def new_epoch(self) -> None:
        self.first_bad.fill_(-1)
        self._seen.fill_(-1)

    def observe(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        loss = terms["loss"]
        if self.reference is None:
            self.reference = loss.detach().abs().clamp_min(1.0)  # the run's first loss, kept on the device
        bad = ~torch.isfinite(loss) | (loss.abs() > self.factor * self.reference)
        new_bad = (self.first_bad < 0) & bad
        self.first_bad = torch.where(new_bad, step, self.first_bad)
        for key, value in terms.items():
            if value.ndim == 0:
                self.terms[key] = torch.where(new_bad, value, self.terms.get(key, torch.zeros_like(value)))
        self._seen.copy_(self.first_bad, non_blocking=self._copied is not None)
        if self._copied is not None:
            self._copied.record()

    def tripped(self) -> bool:
        """Whether a bad step has been seen, from what has reached the host so far (never waits)."""
        if self._copied is not None and not self._copied.query():
            return False
        return int(self._seen) >= 0

    def reference_value(self) -> float | None:
        """The first loss as a number, for the checkpoint (a resumed run keeps its yardstick)."""
        return None if self.reference is None else float(self.reference)

    def problem(self, epoch: int) -> str | None:
        """One host read: what went wrong this epoch and what to change, or None."""
        step = int(self.first_bad.item())
        if step < 0:
            return None
        loss = self.terms["loss"].item()
        named = ", ".join(f"{key}={value.item():.4g}" for key, value in self.terms.items() if key != "loss")
        what = "non-finite loss" if not torch.isfinite(self.terms["loss"]) else f"loss exploded to {loss:.4g}"
        details = [named] if named else []
        if self.reference is not None and torch.isfinite(self.reference):
            details.append(f"the run began at {float(self.reference):.4g}")
        return f"{what} at epoch {epoch + 1}, step {step + 1}" + (f" ({'; '.join(details)})" if details else "")


class StopSignals:
    """Turns SIGTERM and SIGINT into a request the loop honours after the current step."""

    def __init__(self):
        self.received: str | None = None
        self.finishing = False  # a rank stopping on purpose (exit 75)
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self.finishing and self._previous and distributed.shard().world > 1:
            # on its way out with exit 75: when another rank exits first, torchrun SIGTERMs this one (even during
            # interpreter shutdown, where a Python handler no longer runs), which would turn 75 into -15
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
