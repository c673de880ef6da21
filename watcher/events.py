"""File events (inotify through watchdog): the fast signal that something may have changed.

Events are a hint, never the truth: the daemon reconciles against git whenever one
arrives. Two places matter:

- the branch refs in the git directory (``HEAD``, ``packed-refs``, ``refs/heads/**``):
  a commit, merge, pull or fast-forward moves them, and that is the moment a trigger
  becomes committed. Git writes a ref as ``<name>.lock`` and renames it into place, so a
  move's destination counts, and the rest of ``.git`` (objects, index, logs) is noise;
- the trigger folder in the work tree. A checkout can delete it, and with it the watch.
  The root and each folder on the way down (``.monkeytown``, ``decisions``, the trigger
  folder) get a non-recursive watch of their own, and :meth:`ChangeSignal.refresh`
  re-creates any whose folder (by inode) is not the one watched. Non-recursive watches
  also avoid watchdog's race when a recursive watch sees nested folders appear at once.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from watchdog.events import (
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import ObservedWatch
from watchdog.observers.inotify_move_event_grouper import InotifyMoveEventGrouper

from triggers import TRIGGER_DIR
from triggers.gitobjects import git

log = structlog.get_logger("watcher")

_TOP = Path(TRIGGER_DIR).parts[0]  # ".monkeytown": survives when the leaf folder is deleted
_GIT_FILES = frozenset({"HEAD", "packed-refs"})

# watchdog holds an IN_MOVED_FROM for up to 0.5 s to pair it with its IN_MOVED_TO, and its
# queue sleeps out the whole hold even when the pair arrives a moment later. When a ref
# update (main.lock renamed to main) was split across two inotify reads, which happened
# about once in 150 commits here, the watcher woke 500 ms late. It needs no pairing: an
# unpaired IN_MOVED_TO still arrives as the creation of the ref, which wakes it.
InotifyMoveEventGrouper.delay = 0.01


class WatchLimitError(RuntimeError):
    """The kernel refused another inotify watch or instance; the message names the limit."""


class _Relevant(FileSystemEventHandler):
    """Passes on events about refs and trigger files; drops the rest of ``.git``."""

    def __init__(self, repo: Path, gitdir: Path, wake: Callable[[float], None]) -> None:
        self.repo = str(repo)
        self.gitdir = str(gitdir)
        self.heads = os.path.join(self.gitdir, "refs", "heads")
        self.top = os.path.join(self.repo, _TOP)
        self.wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent | FileClosedNoWriteEvent):
            return
        paths = [os.fsdecode(event.src_path), os.fsdecode(event.dest_path or b"")]
        if any(path and self._relevant(path) for path in paths):
            self.wake(time.time())

    def _relevant(self, path: str) -> bool:
        if path.startswith(self.gitdir + os.sep):
            if path.endswith(".lock"):
                return False
            return path.startswith(self.heads + os.sep) or os.path.basename(path) in _GIT_FILES
        return path == self.top or path.startswith(self.top + os.sep)


class ChangeSignal:
    """An inotify observer on one checkout that calls *wake* with the event time."""

    def __init__(self, repo: Path, wake: Callable[[float], None]) -> None:
        self.repo = Path(repo).resolve()
        self.gitdir = Path(git(self.repo, "rev-parse", "--absolute-git-dir").decode().strip())
        self.handler = _Relevant(self.repo, self.gitdir, wake)
        self.observer = Observer()
        self.levels = [self.repo.joinpath(*Path(TRIGGER_DIR).parts[: depth + 1])
                       for depth in range(len(Path(TRIGGER_DIR).parts))]  # fmt: skip
        self._watched: dict[Path, tuple[ObservedWatch, int]] = {}

    def start(self) -> ChangeSignal:
        self._schedule(self.repo, recursive=False)
        self._schedule(self.gitdir, recursive=False)
        heads = self.gitdir / "refs" / "heads"
        heads.mkdir(parents=True, exist_ok=True)
        self._schedule(heads, recursive=True)
        self.observer.start()
        self.refresh()
        return self

    def refresh(self) -> None:
        """Watch the trigger folder and its parents again where a checkout replaced them."""
        for folder in self.levels:
            try:
                inode: int | None = folder.stat().st_ino
            except FileNotFoundError:
                inode = None
            current = self._watched.get(folder)
            if current is not None and current[1] == inode:
                continue
            if current is not None:
                self.observer.unschedule(current[0])
                del self._watched[folder]
            if inode is not None:
                self._watched[folder] = (self._schedule(folder, recursive=False), inode)

    @property
    def watched(self) -> list[Path]:
        """The work-tree folders under a live watch right now (for tests and /ready)."""
        return sorted(self._watched)

    def stop(self) -> None:
        if self.observer.is_alive():
            self.observer.stop()
            self.observer.join()

    def _schedule(self, path: Path, *, recursive: bool) -> ObservedWatch:
        try:
            return self.observer.schedule(self.handler, str(path), recursive=recursive)
        except OSError as exc:
            raise WatchLimitError(_limit_message(exc, path)) from exc


def _limit_message(exc: OSError, path: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return (
            f"cannot watch {path}: the inotify watch limit fs.inotify.max_user_watches is "
            "exhausted; raise it (sysctl fs.inotify.max_user_watches=524288)"
        )
    if exc.errno == errno.EMFILE:
        return (
            f"cannot watch {path}: the inotify instance limit fs.inotify.max_user_instances "
            "is exhausted; raise it (sysctl fs.inotify.max_user_instances=1024)"
        )
    return f"cannot watch {path}: {exc.strerror}"
