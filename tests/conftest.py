"""Suite-wide setup: 8 fake CPU devices so sharding tests see a real mesh.

Must run before JAX initialises its backends, hence at import of conftest.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# The CLI's persistent compilation cache stays off in tests (no writes under ~/.cache);
# tests/test_compile_cache.py turns it on in subprocesses.
os.environ.setdefault("REALM_JAX_COMPILE_CACHE", "off")
