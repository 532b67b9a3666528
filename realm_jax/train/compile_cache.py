"""Persistent XLA compilation cache for the command line's compiling commands.

A sweep runs the same shapes in many processes, and every `realm-jax train`,
`eval` or `generate` otherwise compiles its sampler and train steps afresh
(several seconds each on CPU, more on TPU). JAX can keep compiled executables
on disk, keyed by the program, compile options, device kind and JAX version;
this turns it on for the CLI:

  REALM_JAX_COMPILE_CACHE=DIR   cache directory; default $XDG_CACHE_HOME/realm_jax/xla
                                (~/.cache/realm_jax/xla)
  REALM_JAX_COMPILE_CACHE=off   no cache (also: 0, false, no, empty)

Only compilations taking at least JAX's `jax_persistent_cache_min_compile_time_secs`
(1 s by default) are written. Library users call `enable` themselves or set
`jax_compilation_cache_dir` directly.
"""

from __future__ import annotations

import os
import sys
from typing import Mapping

import jax

ENV = "REALM_JAX_COMPILE_CACHE"
_OFF = ("off", "0", "false", "no", "")


def cache_dir(environ: Mapping[str, str] = os.environ) -> str | None:
  """The directory the CLI would use, or None when the environment turns the cache off."""
  value = environ.get(ENV)
  if value is not None:
    return None if value.strip().lower() in _OFF else os.path.expanduser(value)
  base = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "realm_jax", "xla")


def enable(environ: Mapping[str, str] = os.environ) -> str | None:
  """Point JAX's persistent compilation cache at `cache_dir(environ)`; returns it (None: off).

  A directory that cannot be created only costs the cache: one line on stderr
  naming it and the reason, and the run goes on without it.
  """
  path = cache_dir(environ)
  if path is None:
    return None
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    print(f"[realm-jax] compilation cache off: cannot create {path} ({e.strerror}); "
          f"set {ENV}=DIR or {ENV}=off", file=sys.stderr)
    return None
  jax.config.update("jax_compilation_cache_dir", path)
  return path
