"""SIGTERM (a TPU preemption notice, a scheduler's stop) and SIGINT (Ctrl-C) -> save and exit.

`handling()` installs, for the life of a run, handlers that only set a flag
(and remember which signal came first); the loop (`train.loop.run_loop`) calls
`requested()` after each step and, when set, checkpoints the step just finished
and raises `Preempted`, a `SystemExit` with the conventional status: 0 after
SIGTERM (the scheduler asked, the run complied), 130 = 128 + SIGINT after
Ctrl-C. No traceback either way; rerunning the same command resumes from that
checkpoint. A second SIGINT while the first is pending interrupts at once
(`KeyboardInterrupt`), for a user who does not want to wait for the step.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_flag = threading.Event()
_signal: list[int] = []  # the first signal received since the last reset

EXIT_STATUS = {signal.SIGTERM: 0, signal.SIGINT: 128 + signal.SIGINT}


class Preempted(SystemExit):
  """Raised by a loop after it saved its state on SIGTERM / SIGINT."""

  def __init__(self, where: str, status: int = 0):
    super().__init__(status)
    self.where = where


def _handler(signum: int, frame) -> None:
  if signum == signal.SIGINT and _flag.is_set():
    raise KeyboardInterrupt
  if not _flag.is_set():
    _signal.append(signum)
  _flag.set()


@contextlib.contextmanager
def handling() -> Iterator[None]:
  """SIGTERM and SIGINT only set the flag inside the block; the previous handlers come back
  after it (tests and notebooks that call `train.run` keep their own Ctrl-C)."""
  reset()
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = {s: signal.signal(s, _handler) for s in EXIT_STATUS}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def requested() -> bool:
  return _flag.is_set()


def request(signum: int = signal.SIGTERM) -> None:
  """What the handler does, callable directly (tests, a controller thread)."""
  _handler(signum, None)


def exit_status() -> int:
  """The exit status the first signal received asks for (0 when none)."""
  return EXIT_STATUS.get(_signal[0], 0) if _signal else 0


def reset() -> None:
  _flag.clear()
  _signal.clear()
