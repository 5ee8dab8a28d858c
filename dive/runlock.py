"""One training process per run folder: an exclusive lock held for the whole run.

A second ``train.py`` on the same ``--out`` (or a ``--resume`` while the first
still runs) would interleave checkpoints and logs. ``RunLock`` takes an
advisory ``flock`` on ``RUN/.lock`` before anything in the folder is read or
written and holds it until training ends. The operating system drops the
lock when its process dies, however it dies (SIGKILL included), so a folder
left by a killed run is taken over with nothing to delete. The file records
the holder (pid, host, start time, command line), which is what a refusal
prints; a run that ends clears it, so a record found on taking the lock
means its process died.

Where ``fcntl`` is missing (Windows), training proceeds without the lock and
says so. Locks on network file systems are only as good as the file
system's ``flock``.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import TrainingError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

LOCK_NAME = ".lock"


def _describe(holder: dict) -> str:
    if not holder:
        return "a process that left no record"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}: "
            f"{holder.get('command', '?')}")


def _read(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


class RunLock:
    """The lock on run folder `folder` (created if missing). ``acquire`` returns a note when it took
    over a lock whose process is gone, else None; it raises TrainingError when another live process
    holds the folder."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> str | None:
        if fcntl is None:  # pragma: no cover - Windows
            return f"note: {self.folder} is not locked against a second training process on this platform"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise TrainingError(f"cannot create the lock file {self.path}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise TrainingError(
                f"run folder {self.folder} is in use by another training process ({_describe(_read(self.path))}); "
                "wait for it to end or stop it, or train into another --out") from None
        previous = _read(self.path)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        os.fsync(fd)
        self._fd = fd
        if previous and previous.get("pid") != os.getpid():
            return f"took over {self.folder} from a training process that is gone ({_describe(previous)})"
        return None

    def release(self) -> None:
        """Clear the record (a record left behind means its process died) and unlock."""
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
                self._fd = None
