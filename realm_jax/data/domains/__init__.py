"""Vertical domains: each a rule book, a question generator and a solver.

`DOMAINS` maps a built-in name to its `Domain` instance; `get_domain(spec)` looks one up, or loads
a user's own domain class:
  - `"tariff"`, `"dosing"`, `"tax"`: the built-ins,
  - `"path/to/file.py:ClassName"`: a `Domain` subclass in a file outside the package (relative
    paths from the working directory),
  - `"package.module:ClassName"`: a `Domain` subclass in an importable module.
The class is instantiated with no arguments, once per spec. See `domains/base.py` for the shared
shape (routes, named errors, verification).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from types import ModuleType

from realm_jax.data.domains.base import ERROR_TYPES, Chain, Domain, Rule
from realm_jax.data.domains.dosing import Dosing
from realm_jax.data.domains.tariff import Tariff
from realm_jax.data.domains.tax import Tax

DOMAINS: dict[str, Domain] = {d.name: d for d in (Tariff(), Dosing(), Tax())}
_LOADED: dict[tuple[str, str], Domain] = {}


def _load_module(where: str) -> ModuleType:
  """The module in file `where` (a path ending in .py) or importable as `where`."""
  if not where.endswith(".py"):
    try:
      return importlib.import_module(where)
    except ImportError as e:
      raise ValueError(f"domain module {where!r} cannot be imported: {e}") from None
  path = os.path.abspath(where)
  if not os.path.isfile(path):
    raise ValueError(f"domain file {where} not found (relative to {os.getcwd()})")
  stem = os.path.splitext(os.path.basename(path))[0]
  name = f"realm_domain_{stem}_{hashlib.sha1(path.encode()).hexdigest()[:8]}"
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module  # dataclasses and pickling look the module up by name
  try:
    spec.loader.exec_module(module)
  except BaseException:
    sys.modules.pop(name, None)
    raise
  return module


def _load_domain(spec: str) -> Domain:
  where, attr = spec.rsplit(":", 1)
  if not where or not attr:
    raise ValueError(f"bad domain {spec!r}: expected 'path/to/file.py:ClassName' or "
                     f"'module:ClassName'")
  key = (os.path.abspath(where) if where.endswith(".py") else where, attr)
  if key in _LOADED:
    return _LOADED[key]
  cls = getattr(_load_module(where), attr, None)
  if cls is None:
    raise ValueError(f"domain {spec!r}: {where} has no class {attr!r}")
  if not (isinstance(cls, type) and issubclass(cls, Domain)):
    raise ValueError(f"domain {spec!r}: {where}:{attr} is not a Domain subclass "
                     f"(realm_jax.data.domains.Domain)")
  if inspect.isabstract(cls):
    missing = ", ".join(sorted(cls.__abstractmethods__))
    raise ValueError(f"domain {spec!r}: {where}:{attr} does not implement {missing}")
  domain = cls()
  if not isinstance(getattr(domain, "name", None), str) or not domain.name:
    raise ValueError(f"domain {spec!r}: {where}:{attr} must set a class attribute `name` (a str)")
  _LOADED[key] = domain
  return domain


def get_domain(name: str) -> Domain:
  """The domain `name` stands for (see the module docstring); a ValueError says what is wrong."""
  if name in DOMAINS:
    return DOMAINS[name]
  if ":" not in name:
    raise ValueError(f"unknown domain {name!r}; valid domains: {', '.join(sorted(DOMAINS))}")
  return _load_domain(name)


__all__ = ["DOMAINS", "ERROR_TYPES", "Chain", "Domain", "Rule", "get_domain"]
