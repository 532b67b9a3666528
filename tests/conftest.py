"""Suite-wide setup: 8 fake CPU devices so sharding tests see a real mesh, and one
persistent XLA compilation cache per test session.

Must run before JAX initialises its backends, hence at import of conftest.

The cache: the suite builds the same small programs many times (every
in-process `train.run` makes fresh jitted closures; every CLI subprocess starts
cold). JAX's persistent cache, keyed by the compiled program, lets the repeats
load the executable instead of compiling it again; it changes no number. It
lives in a fresh temporary directory made by the first process that imports
this file (pytest's controller, whose environment the xdist workers and every
CLI subprocess inherit) and removed when that process exits. Tests that count
backend compiles take the `fresh_compiles` fixture.
"""
import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  _flags += " --xla_force_host_platform_device_count=8"
# The suite compiles hundreds of small programs and runs each a few times: LLVM's
# optimisation of the generated CPU code costs it more than the code saves (it
# took 3.5 of the suite's 18 minutes). Matmuls still run in their libraries, and
# every test compares with an independent reference or a second run under the
# same flags, never with a number kept from an optimised build. XLA_FLAGS that
# set either flag themselves win.
if "xla_backend_optimization_level" not in _flags:
  _flags += " --xla_backend_optimization_level=0"
if "xla_llvm_disable_expensive_passes" not in _flags:
  _flags += " --xla_llvm_disable_expensive_passes=true"
os.environ["XLA_FLAGS"] = _flags.strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The CLI's own cache setting stays off in tests (no writes under ~/.cache);
# tests/test_compile_cache.py turns it on in subprocesses.
os.environ.setdefault("REALM_JAX_COMPILE_CACHE", "off")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="realm_jax_test_xla_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture
def fresh_compiles():
  """JAX's persistent compilation cache off for one test: every compile is then a
  backend compile, which `jax.monitoring` reports by function name (a cache hit
  would not be reported, and a test counting compiles would pass for the wrong
  reason)."""
  import jax
  from jax._src import compilation_cache  # reset_cache: no public way to re-read the setting
  jax.config.update("jax_enable_compilation_cache", False)
  compilation_cache.reset_cache()
  try:
    yield
  finally:
    jax.config.update("jax_enable_compilation_cache", True)
    compilation_cache.reset_cache()
