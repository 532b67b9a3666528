"""The CLI's persistent compilation cache: where it goes, how it turns off, and
that a second process really compiles from it (JAX's own cache-hit events)."""

import json
import os
import subprocess
import sys


from realm_jax.train import compile_cache


def test_cache_dir_from_environment(tmp_path):
  home = os.path.expanduser("~")
  assert compile_cache.cache_dir({}) == os.path.join(home, ".cache", "realm_jax", "xla")
  assert compile_cache.cache_dir({"XDG_CACHE_HOME": "/x/c"}) == "/x/c/realm_jax/xla"
  assert compile_cache.cache_dir({compile_cache.ENV: str(tmp_path)}) == str(tmp_path)
  assert compile_cache.cache_dir({compile_cache.ENV: "~/xc"}) == os.path.join(home, "xc")
  for off in ("off", "OFF", "0", "false", "no", "", " "):
    assert compile_cache.cache_dir({compile_cache.ENV: off, "XDG_CACHE_HOME": "/x"}) is None


def test_uncreatable_directory_names_it_and_runs_on(tmp_path, capsys):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  assert compile_cache.enable({compile_cache.ENV: str(blocker / "xla")}) is None
  err = capsys.readouterr().err
  assert str(blocker / "xla") in err and compile_cache.ENV in err
  assert compile_cache.enable({compile_cache.ENV: "off"}) is None


def _run(code: str, env_extra: dict) -> str:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", **env_extra}
  # The suite's own session cache (tests/conftest.py) would set jax_compilation_cache_dir.
  for k in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"):
    env.pop(k, None)
  env["XLA_FLAGS"] = ""  # one device is enough here
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout.strip().splitlines()[-1]


def test_cli_enables_the_cache_for_compiling_commands(tmp_path):
  code = ("from realm_jax.cli.main import main; main(['data', 'stats', 'domain:tax', '--n', '3']); "
          "import jax; print(jax.config.jax_compilation_cache_dir)")
  assert _run(code, {compile_cache.ENV: str(tmp_path / "c")}) == str(tmp_path / "c")
  assert _run(code, {compile_cache.ENV: "off"}) == "None"


def test_second_process_compiles_from_the_cache(tmp_path):
  code = """
import json, jax, jax.numpy as jnp
from realm_jax.train import compile_cache
events = []
jax.monitoring.register_event_listener(lambda name, **kw: events.append(name))
compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
print(float(f(jnp.arange(64.0).reshape(8, 8) / 64)))
print(json.dumps({"hits": events.count("/jax/compilation_cache/cache_hits")}))
"""
  env = {compile_cache.ENV: str(tmp_path / "cache")}
  first = json.loads(_run(code, env))
  assert first["hits"] == 0 and any((tmp_path / "cache").iterdir())
  second = json.loads(_run(code, env))
  assert second["hits"] >= 1
