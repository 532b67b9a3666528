"""SIGTERM (a TPU preemption notice, a scheduler's stop) -> save and exit cleanly.

`install()` replaces the SIGTERM handler with one that only sets a flag; the
loops call `requested()` after each step and, when set, write a checkpoint of
the step just finished and raise `Preempted`, which the CLI turns into a clean
exit (status 0). Rerunning the same command resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading

_flag = threading.Event()


class Preempted(SystemExit):
  """Raised by a loop after it saved its state on SIGTERM."""

  def __init__(self, where: str):
    super().__init__(0)
    self.where = where


def install() -> None:
  if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, lambda signum, frame: _flag.set())


def requested() -> bool:
  return _flag.is_set()


def reset() -> None:
  _flag.clear()
