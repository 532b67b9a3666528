"""Names of plug-in functions (losses, advantage estimators, rewards) to functions.

A config names a function in one of three ways:
  - a built-in name, looked up in a plain dict (`losses.LOSSES`,
    `advantages.ADVANTAGES`, `rewards.default_scorers()`),
  - `"package.module:function"`, imported like any module,
  - `"path/to/file.py:function"`, loaded from that file (relative paths from
    the working directory), so an experiment can name a function in a file
    outside the package.
A callable passes through unchanged, so code may also hand the function itself.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any, Callable, Mapping


def _load_file(path: str) -> Any:
  if not os.path.exists(path):
    raise FileNotFoundError(f"plug-in file {path} not found (relative to {os.getcwd()})")
  name = "realm_plugin_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def resolve(name: str | Callable, builtins: Mapping[str, Callable], kind: str) -> Callable:
  """The function `name` stands for (see the module docstring); `kind` names it in errors."""
  if callable(name):
    return name
  if name in builtins:
    return builtins[name]
  if ":" not in name:
    raise ValueError(f"unknown {kind} {name!r}; built-in: {', '.join(builtins)}, or name a "
                     f"function as 'module:function' or 'path/to/file.py:function'")
  where, attr = name.rsplit(":", 1)
  module = _load_file(where) if where.endswith(".py") else importlib.import_module(where)
  fn = getattr(module, attr, None)
  if not callable(fn):
    raise ValueError(f"{kind} {name!r}: {where} has no function {attr!r}")
  return fn
