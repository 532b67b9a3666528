"""User errors vs bugs: which is which, and the one line the CLI prints for a user error."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from realm_jax import errors
from realm_jax.cli import main as cli
from realm_jax.data import sources


def _caught(fn):
  try:
    fn()
  except Exception as e:  # noqa: BLE001 - the test inspects whatever was raised
    return e
  raise AssertionError("expected an exception")


def test_user_errors_by_type():
  assert errors.is_user_error(errors.ConfigError("x"))
  assert errors.is_user_error(sources.DataFormatError("f:1: field 'a': missing"))
  assert errors.is_user_error(_caught(lambda: open("/nonexistent/realm-jax-file")))
  assert errors.is_user_error(_caught(lambda: open(os.sep)))  # IsADirectoryError
  assert not errors.is_user_error(RuntimeError("internal"))
  assert not errors.is_user_error(KeyError("k"))


def test_value_errors_count_by_where_they_were_raised():
  """A check of an input module is the user's; a ValueError from inside numpy is a bug."""
  from realm_jax.model import hf
  e = _caught(lambda: hf.config_from_hf({"architectures": ["GPT2LMHeadModel"]}, "config.json"))
  assert isinstance(e, ValueError) and errors.is_user_error(e), e
  bug = _caught(lambda: np.zeros(3).reshape(2, 2))
  assert isinstance(bug, ValueError) and not errors.is_user_error(bug)
  assert not errors.is_user_error(_caught(lambda: int("x")))  # raised here, not in realm_jax


def test_exit_codes_and_messages():
  assert errors.exit_code(errors.ConfigError("x")) == 2
  assert errors.exit_code(errors.DataError("x")) == 1
  assert errors.exit_code(FileNotFoundError("x")) == 1
  missing = _caught(lambda: open("/nonexistent/a.jsonl"))
  assert errors.message(missing) == (
      "/nonexistent/a.jsonl: no such file or directory; check the path")
  assert errors.message(ValueError("first line\n  second line\n")) == "first line second line"


def test_debug_switch(monkeypatch):
  for value, on in (("1", True), ("true", True), ("0", False), ("", False), ("no", False)):
    monkeypatch.setenv("REALM_JAX_DEBUG", value)
    assert errors.debug() is on
  monkeypatch.delenv("REALM_JAX_DEBUG")
  assert errors.debug() is False


def test_main_turns_a_user_error_into_one_line(capsys, tmp_path):
  with pytest.raises(SystemExit) as info:
    cli.main(["data", "stats", f"gsm8k:{tmp_path / 'nope.jsonl'}"])
  assert info.value.code == 1
  err = capsys.readouterr().err
  path = tmp_path / "nope.jsonl"
  assert err == f"realm-jax: error: {path}: no such file or directory; check the path\n"


def test_main_keeps_the_traceback_of_a_bug(monkeypatch):
  from realm_jax.cli import datastats

  def broken(*args, **kwargs):
    raise ValueError("an internal invariant broke")  # raised in a test module: a bug

  monkeypatch.setattr(datastats, "print_stats", broken)
  with pytest.raises(ValueError, match="internal invariant"):
    cli.main(["data", "stats", "domain:tax"])


def test_debug_env_reraises_user_errors(monkeypatch, tmp_path):
  monkeypatch.setenv("REALM_JAX_DEBUG", "1")
  with pytest.raises(FileNotFoundError):
    cli.main(["data", "stats", f"gsm8k:{tmp_path / 'nope.jsonl'}"])


def test_subprocess_error_line_and_debug_traceback(tmp_path):
  """Through the real entry point: one stderr line without, a traceback with REALM_JAX_DEBUG."""
  cmd = [sys.executable, "-m", "realm_jax", "plot-schedule", "demo", "--out",
         str(tmp_path / "s.png"), "rl.lr=-1"]
  env = {k: v for k, v in os.environ.items() if k != "REALM_JAX_DEBUG"}
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
  assert r.returncode == 2 and r.stderr == "realm-jax: error: rl.lr=-1.0 must be > 0\n"
  r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                     env={**env, "REALM_JAX_DEBUG": "1"})
  assert r.returncode == 1 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def _train(*args: str) -> subprocess.CompletedProcess:
  """`realm-jax train ...` on one CPU device, REALM_JAX_DEBUG unset."""
  from tests.test_lock import _env
  env = {k: v for k, v in _env().items() if k != "REALM_JAX_DEBUG"}
  return subprocess.run([sys.executable, "-m", "realm_jax", "train", *args], capture_output=True,
                        text=True, timeout=300, env=env)


def test_resume_under_another_config_is_a_config_error_exit_2(tmp_path):
  from realm_jax import configs
  from realm_jax.cli import train
  from realm_jax.train import workdir
  wd = tmp_path / "run"
  wd.mkdir()
  recorded = ["mesh=1,1,1", "base.lr=0.002"]
  workdir.write_json(str(wd / "run.json"), {
      "experiment": "base_model", "overrides": recorded,
      "config": train.config_record(configs.load_experiment("base_model", recorded))})
  r = _train("base_model", "--workdir", str(wd), "mesh=1,1,1", "base.lr=0.001")
  assert r.returncode == 2, r.stderr[-3000:]
  assert r.stderr == (f"realm-jax: error: {wd} holds a run of base_model whose config differs "
                      "(base.lr: 0.002 -> 0.001); refusing to resume it as base_model. Use "
                      "another --workdir.\n")


def test_a_data_source_typo_records_nothing_and_the_fixed_command_runs_to_the_end(tmp_path):
  from tests.test_train import MICRO
  wd = tmp_path / "typo"
  r = _train("base_model", "--workdir", str(wd), *MICRO, "data.source=domain:tarif")
  assert r.returncode == 2 and r.stderr == (
      "realm-jax: error: unknown domain 'tarif'; valid domains: dosing, tariff, tax\n"), r.stderr
  assert not wd.exists()  # created by the failed run, removed with its lock file: no run.json
  r = _train("base_model", "--workdir", str(wd), *MICRO)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Traceback" not in r.stderr and (wd / "DONE").exists() and (wd / "params/base").exists()
  with open(wd / "run.json") as f:
    assert json.load(f)["overrides"] == MICRO
