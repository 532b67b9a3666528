"""A run's working directory: checked before use, locked for the run's life, JSON written whole.

- `ensure(path)` makes the directory or says in one sentence why it cannot:
  the path is a file, a parent is a file, or it is not writable. It returns
  whether it created the directory.
- `locked(path)` holds an exclusive `fcntl.flock` on `path/.lock` while a
  run lives; a second run on the same directory is refused (`WorkdirLocked`,
  a user error, so the CLI prints it as one `realm-jax: error:` line naming
  the holder's PID, which the holder writes into the lock file). The kernel
  drops the lock when its holder dies, kill -9 included, so a stale lock file
  never blocks. Only process 0 locks: on a multi-host run the others share its
  directory. With `remove_unused=True` (the run created the directory) a block
  that raises before anything was written there takes the lock file and the
  directory with it, so a failed set-up leaves nothing behind.
- `write_json(path, obj)` writes a temporary file then renames it: a reader
  sees the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from typing import Any, Iterator

import jax

from realm_jax import errors

LOCK_NAME = ".lock"


class WorkdirLocked(errors.UserError):
  """Another live run holds the directory (the CLI: one error line, exit status 1)."""


def ensure(path: str) -> bool:
  """Creates `path` (and parents) when missing; raises with the reason when it cannot be used.
  Returns True when it created `path`."""
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"--workdir {path} is a file, not a directory; pass a directory "
                             "(it is created when missing)")
  created = not os.path.isdir(path)
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:  # same class (PermissionError, NotADirectoryError, ...), a clear message
    raise type(e)(f"cannot create --workdir {path}: {e.strerror or e}") from e
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f"--workdir {path} is not writable by this user; pick another "
                          "directory or fix its permissions")
  return created


def _holder(f) -> str:
  f.seek(0)
  pid = f.read().strip()
  return f"PID {pid}" if pid else "a process that has not written its PID yet"


def _remove_if_unused(path: str) -> None:
  """Removes the lock file and directory `path` when they are all it holds (lock still held:
  a run that starts meanwhile fails to lock, or locks a new file and keeps the directory)."""
  with contextlib.suppress(OSError):  # never hides the error that ended the block
    if os.listdir(path) != [LOCK_NAME]:
      return
    os.unlink(os.path.join(path, LOCK_NAME))
    os.rmdir(path)  # fails, keeping the directory, if another run's lock file appeared meanwhile


@contextlib.contextmanager
def locked(path: str, remove_unused: bool = False) -> Iterator[None]:
  """Holds the exclusive lock on run directory `path` (which must exist) inside the block; with
  `remove_unused`, a block that raises leaving only the lock file removes it and `path`."""
  if jax.process_index() != 0:
    yield
    return
  with open(os.path.join(path, LOCK_NAME), "a+") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirLocked(f"--workdir {path} is in use by another run ({_holder(f)}); "
                          "wait for it to finish or use another --workdir") from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    try:
      yield
    except BaseException:
      if remove_unused:
        _remove_if_unused(path)
      raise
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: str, obj: Any) -> None:
  """`json.dump(obj)` into `path` atomically (a temporary file in the same directory, renamed)."""
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
    f.write("\n")
  os.replace(tmp, path)
