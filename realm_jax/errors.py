"""Which failures are the user's (bad input) and which are bugs, and how the CLI words them.

Conventions
- A user error is bad input the user can fix: a path that does not exist, a
  config value out of range, a malformed data line, a model realm_jax cannot
  load. The CLI prints it as one line, `realm-jax: error: <what, where, what to
  do>`, and exits with `exit_code(e)`: 2 for usage and config errors, 1 for the
  rest. Anything else is a bug and keeps its traceback. `REALM_JAX_DEBUG=1`
  brings the traceback back for user errors too.
- User errors are, by type: `UserError` and its subclasses (`ConfigError`,
  `DataError`); the file-system errors of `FILE_ERRORS`; and a `ValueError` or
  `ImportError` raised directly (innermost frame) by a module of
  `INPUT_MODULES`, the modules whose own checks read user input (model files,
  tokenizers, run directories, sweep files). A `ValueError` raised deeper, e.g.
  inside jax or numpy, is a bug.
- `ConfigError` and `DataError` also derive from `ValueError`, so callers that
  catch `ValueError` keep working.
- `DataWarning`s (excluded or suspicious data items, with counts) print as one
  line too, `realm-jax: warning: <summary>`.
"""

from __future__ import annotations

import os
import types

FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError,
               FileExistsError)
INPUT_MODULES = ("realm_jax.configs", "realm_jax.data.sources", "realm_jax.data.teachers",
                 "realm_jax.data.records", "realm_jax.data.domains", "realm_jax.model.hf",
                 "realm_jax.model.gguf", "realm_jax.model.tokenizer", "realm_jax.model.pretrained",
                 "realm_jax.cli.train", "realm_jax.cli.sweep", "realm_jax.cli.bench")
DEBUG_ENV = "REALM_JAX_DEBUG"


class UserError(Exception):
  """Bad input the user can fix; the message says what, where and what to do."""


class ConfigError(UserError, ValueError):
  """A config, override or command-line value that is unknown, mistyped or out of range."""


class DataError(UserError, ValueError):
  """A data file or source that cannot be used (malformed, empty, over a limit)."""


class DataWarning(UserWarning):
  """Items of a data file were excluded or are suspicious; the message counts them."""


def _raised_in(tb: types.TracebackType | None) -> str:
  """The module name of the innermost frame of traceback `tb` ('' when unknown)."""
  if tb is None:
    return ""
  while tb.tb_next is not None:
    tb = tb.tb_next
  return str(tb.tb_frame.f_globals.get("__name__", ""))


def is_user_error(e: BaseException) -> bool:
  """True when `e` is bad input (see the module docstring), False for a bug."""
  if isinstance(e, (UserError, *FILE_ERRORS)):
    return True
  if isinstance(e, (ValueError, ImportError)):
    module = _raised_in(e.__traceback__)
    return module in INPUT_MODULES
  return False


def exit_code(e: BaseException) -> int:
  """2 for usage/config errors, 1 for the other user errors."""
  return 2 if isinstance(e, ConfigError) else 1


def message(e: BaseException) -> str:
  """One line for user error `e`: its text, newlines folded, OS errors as `PATH: reason`."""
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    text = f"{os.fsdecode(e.filename)}: {e.strerror.lower()}"
    if isinstance(e, FileNotFoundError):
      text += "; check the path"
    elif isinstance(e, IsADirectoryError):
      text += "; give the path of a file"
  else:
    text = str(e) or type(e).__name__
  return " ".join(part.strip() for part in text.splitlines() if part.strip())


def debug() -> bool:
  """True when REALM_JAX_DEBUG asks for tracebacks of user errors too."""
  return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
