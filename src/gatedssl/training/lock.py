"""One run folder, one writer: a lease on RUN/.lock that a live run renews and a dead one lets lapse.

A second `gatedssl pretrain` on a folder that a live run holds (a forgotten process, a requeued job
while the old one still runs) is refused with one line naming the holder. A pid can only be checked
on its own host, so the lock is a lease: the holder rewrites its heartbeat every HEARTBEAT_S seconds
from a daemon thread, and a lock whose heartbeat is older than STALE_S is taken over (on the holder's
own host, a lock whose process is gone is taken over at once). A restart of the same job (torchrun's
--max-restarts, a Slurm requeue) takes over its earlier attempt's lock at once, wherever rank 0 now
runs: torchrun and Slurm start an attempt only after the previous one has ended.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

from ..checkpoint import atomic_write
from ..errors import UserError

HEARTBEAT_S = 20.0
STALE_S = 90.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _job() -> dict:
    """The scheduler's job and this attempt of it: Slurm's job id and requeue count, torchrun's run id and restart count."""
    job = os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")
    attempt = f"{os.environ.get('SLURM_RESTART_COUNT', '0')}.{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    return {"job": job, "attempt": attempt}


class RunLock:
    """`with RunLock(folder):` holds the folder for this process; raises UserError if a live run holds it."""

    def __init__(self, folder: str | os.PathLike, heartbeat_s: float = HEARTBEAT_S, stale_s: float = STALE_S):
        self.path = Path(folder) / ".lock"
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.me = {"pid": os.getpid(), "host": socket.gethostname()}
        self.job = _job()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.created = False

    def holder(self) -> dict | None:
        """The live holder's record, or None when the folder is free (no lock, a stale one, or ours)."""
        try:
            held = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(held, dict) or {k: held.get(k) for k in self.me} == self.me:
            return None
        if self.job["job"] is not None and held.get("job") == self.job["job"] and held.get("attempt") != self.job["attempt"]:
            return None  # an earlier attempt of this same job: ended before this one began
        try:
            age = time.time() - float(held.get("heartbeat", 0))
            pid = int(held.get("pid", -1))
        except (TypeError, ValueError, OverflowError):  # a lock gatedssl did not write whole: no live run renews it
            return None
        if age > self.stale_s:
            return None
        if held.get("host") == self.me["host"] and not _alive(pid):
            return None
        return {**held, "age": age}

    def __enter__(self) -> RunLock:
        held = self.holder()
        if held is not None:
            raise UserError(
                f"{self.path.parent} is held by a live run: pid {held.get('pid')} on host {held.get('host')} "
                f"(heartbeat {held['age']:.0f} s ago); stop it first, or wait: a lock whose heartbeat stops for "
                f"{self.stale_s:.0f} s is taken over"
            )
        self.created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self._beat()
        self._thread = threading.Thread(target=self._renew, name="gatedssl-run-lock", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        record = {**self.me, **self.job, "started": self.started, "heartbeat": time.time()}
        atomic_write(self.path, lambda fh: fh.write(json.dumps(record).encode()))

    def _renew(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except OSError:  # a full or vanished disk: training will say so itself
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            held = json.loads(self.path.read_text())
            if isinstance(held, dict) and {k: held.get(k) for k in self.me} == self.me:
                self.path.unlink()
            if self.created and not any(self.path.parent.iterdir()):  # a run that failed before writing anything leaves no folder
                self.path.parent.rmdir()
        except (OSError, ValueError):
            pass
