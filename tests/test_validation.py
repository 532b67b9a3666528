"""Stages train to convergence: a held-out validation slice, validation every N steps, the best
checkpoint kept and selected, a plateau stop; logged in metrics.jsonl and plotted.

The loop's rules alone (scripted accuracies, resume mid-plateau) are in tests/test_loop.py; here
the real data split, the config checks and micro runs of SFT and RL through `train.run`.
"""

import math
import os
import shutil

import jax
import numpy as np
import pytest

from realm_jax import configs
from realm_jax.cli import plots, train
from realm_jax.data.config import DataConfig
from realm_jax.errors import ConfigError
from realm_jax.evaluation import accuracy
from realm_jax.rl import corpus
from realm_jax.train import checkpoint, metrics
from tests.test_train import MICRO

# ---------------------------------------------------------------------------
# The validation slice.


@pytest.mark.parametrize("source", ["domain:tariff", "domain:tariff,domain:tax"])
def test_train_eval_and_validation_share_no_question(source):
  data = corpus.build_run_data(DataConfig(source=source, difficulty=1, num_train=120,
                                          num_eval=24, num_valid=32))
  assert data.report == {"num_train": len(data.train), "num_eval": 24, "num_valid": 32}
  slices = [[ex.question for ex in s] for s in (data.train, data.eval, data.valid)]
  assert all(len(s) == len(set(s)) for s in slices)  # no repeats inside a slice either
  train_q, eval_q, valid_q = map(set, slices)
  assert not train_q & eval_q and not train_q & valid_q and not eval_q & valid_q
  assert len(data.train) > 100  # a domain may repeat a few questions: then a little under 120
  # Same source and difficulty as training (ids are DOMAIN-dLEVEL-sSEED-i), with route pools.
  assert {ex.domain for ex in data.valid} == {ex.domain for ex in data.train}
  assert {ex.id.split("-")[1] for ex in data.valid + data.train} == {"d1"}
  assert all(ex.routes for ex in data.valid)


def test_the_validation_slice_leaves_train_and_eval_as_they_were():
  cfg = DataConfig(source="domain:dosing", num_train=60, num_eval=16, num_valid=0)
  without = corpus.build_run_data(cfg)
  assert without.valid == [] and without.report["num_valid"] == 0
  with_valid = corpus.build_run_data(DataConfig(source="domain:dosing", num_train=60,
                                                num_eval=16, num_valid=20))
  assert with_valid.train == without.train and with_valid.eval == without.eval
  assert len(with_valid.valid) == 20
  # Deterministic: the same config draws the same slice.
  again = corpus.build_run_data(DataConfig(source="domain:dosing", num_train=60, num_eval=16,
                                           num_valid=20))
  assert [ex.question for ex in again.valid] == [ex.question for ex in with_valid.valid]


# ---------------------------------------------------------------------------
# Config fields.


def test_convergence_defaults():
  cfg = configs.load_experiment("grpo")  # an experiment that leaves them at their defaults
  assert cfg.data.num_valid == 128
  for stage in (cfg.base, cfg.sft, cfg.rl):
    assert (stage.eval_every, stage.patience, stage.min_delta, stage.select) == (0, 0, 0.0, "best")
  demo = configs.load_experiment("demo")  # the main job validates both stages it trains
  assert (demo.sft.eval_every, demo.sft.patience, demo.sft.select) == (25, 0, "best")
  assert (demo.rl.eval_every, demo.rl.select) == (10, "best")


@pytest.mark.parametrize("override, match", [
    ("sft.eval_every=-1", r"^sft.eval_every=-1 must be >= 0$"),
    ("base.patience=-2", r"^sft.patience=-2 must be >= 0$"),
    ("rl.min_delta=-0.5", r"^rl.min_delta=-0.5 must be >= 0$"),
    ("sft.select=top", r"^sft.select='top'; choose best or last$"),
    ("rl.select=first", r"^rl.select='first'; choose best or last$"),
    ("sft.patience=3", r"^sft.patience=3 counts validations: set sft.eval_every > 0 too$"),
    ("rl.patience=1", r"^rl.patience=1 counts validations: set rl.eval_every > 0 too$"),
    ("data.num_valid=-1", r"^data.num_valid=-1 must be >= 0"),
])
def test_bad_convergence_fields_are_one_line_config_errors(override, match):
  with pytest.raises(ConfigError, match=match):
    configs.load_experiment("grpo", [override])


def test_convergence_fields_are_accepted_in_any_order():
  a = configs.load_experiment("demo", ["sft.patience=3", "sft.eval_every=10", "rl.select=last",
                                       "rl.eval_every=5", "rl.patience=2", "rl.min_delta=0.01",
                                       "data.num_valid=0"])
  b = configs.load_experiment("demo", ["data.num_valid=0", "rl.min_delta=0.01", "rl.patience=2",
                                       "rl.eval_every=5", "rl.select=last", "sft.eval_every=10",
                                       "sft.patience=3"])
  assert a == b and a.sft.patience == 3 and a.rl.select == "last" and a.data.num_valid == 0


# ---------------------------------------------------------------------------
# Plots.


def test_validation_curves_are_the_logged_values_per_phase():
  rows = [{"phase": "base", "step": 0, "loss": 3.0},
          {"phase": "base", "step": 1, "loss": 2.5, "valid_accuracy": 0.25},
          {"phase": "sft_memory", "step": 0, "total_bytes": 10.0},
          {"phase": "sft", "step": 4, "loss": 1.0, "valid_accuracy": 0.5},
          {"phase": "sft", "step": 9, "loss": 0.5, "valid_accuracy": 0.75},
          {"phase": "rl", "step": 2, "accuracy": 0.3, "valid_accuracy": 0.125}]
  assert plots.validation_curves(rows) == {"base": ([1], [0.25]), "sft": ([4, 9], [0.5, 0.75]),
                                           "rl": ([2], [0.125])}
  assert plots.validation_curves([{"phase": "sft", "step": 0, "loss": 1.0}]) == {}


# ---------------------------------------------------------------------------
# Micro runs.

SFT = ["sft.steps=10", "sft.batch_size=4", "sft.eval_every=2", "sft.patience=2",
       "data.num_valid=4", "keep_checkpoints=1"]


def _expected(values: list[float], every: int, patience: int, steps: int) -> tuple[int, int]:
  """(updates done at the stop, at the best validation) by the documented rule, by hand."""
  best, best_at, since = None, None, 0
  for i, v in enumerate(values, 1):
    if best is None or v > best:
      best, best_at, since = v, i * every, 0
    else:
      since += 1
    if since >= patience:
      return i * every, best_at
  return steps, best_at


def _params_at(wd: str, phase: str, step: int, like) -> dict:
  ckpt = checkpoint.Checkpointer(checkpoint.checkpoint_dir(wd, phase))
  try:
    state, extra = ckpt.restore(step=step, abstract_state={"params": jax.eval_shape(lambda: like)},
                                partial=True)
  finally:
    ckpt.close()
  return state["params"], extra


def _same_tree(a, b) -> bool:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y))
                                    for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
  """Base warm-up then SFT validated every 2 steps with patience 2, in one workdir."""
  wd = str(tmp_path_factory.mktemp("valid_sft"))
  train.run("sft", wd, MICRO + SFT)
  return wd


def test_sft_logs_validation_every_n_steps_and_ends_with_the_best(sft_run):
  wd = sft_run
  rows = [r for r in metrics.read_metrics(wd, "sft") if "loss" in r]
  valid = [(r["step"], r["valid_accuracy"]) for r in rows if "valid_accuracy" in r]
  values = [v for _, v in valid]
  stop, best_at = _expected(values, every=2, patience=2, steps=10)
  assert [s for s, _ in valid] == list(range(1, stop, 2))  # after 2, 4, ... updates
  assert [r["step"] for r in rows] == list(range(stop))  # stopped early or ran every step
  assert all(0 <= v <= 1 and math.isfinite(v) for v in values)
  assert not [r for r in metrics.read_metrics(wd, "base") if "valid_accuracy" in r]
  # The best checkpoint (and the latest) survive keep_checkpoints=1; the stage's final params
  # (params/sft) are the best checkpoint's, bitwise.
  ckpt_steps = checkpoint.finalized_steps(checkpoint.checkpoint_dir(wd, "sft"))
  assert ckpt_steps == sorted({best_at, stop})
  cfg = train.load_config(wd)
  ctx = train.prepare(cfg, wd, train.make_mesh(cfg.mesh), create=False)
  final = train.load_params(train.params_path(wd, "sft"), ctx.model_cfg)
  best, extra = _params_at(wd, "sft", best_at, final)
  assert _same_tree(final, best)
  assert extra["loop"]["step"] == best_at and extra["loop"]["since"] == 0
  if best_at != stop:
    assert not _same_tree(final, _params_at(wd, "sft", stop, final)[0])
  # The logged accuracy is the best params' greedy accuracy without routes on the slice.
  res = accuracy.evaluate_params(final, ctx.model_cfg, ctx.tokenizer, ctx.data.valid,
                                 accuracy.EvalConfig(k=1, max_new_tokens=cfg.eval.max_new_tokens,
                                                     batch_size=cfg.eval.batch_size),
                                 cfg.rl.mrpv, with_routes=False, seed=cfg.seed)
  assert res["accuracy"] == dict(valid)[best_at - 1]


def test_a_stopped_sft_is_skipped_and_rerun_without_its_params_runs_no_step(sft_run, tmp_path):
  wd = str(tmp_path / "copy")
  shutil.copytree(sft_run, wd)
  before = metrics.read_metrics(wd)
  final = os.path.join(wd, "params", "sft")
  with open(os.path.join(final, "_CHECKPOINT_METADATA"), "rb") as f:
    written = f.read()
  train.run("sft", wd, MICRO + SFT)  # finished: skipped, params untouched
  with open(os.path.join(final, "_CHECKPOINT_METADATA"), "rb") as f:
    assert f.read() == written
  # Killed after the stop's checkpoint but before params/sft: the rerun restores the stop,
  # sees the plateau, runs no step, and writes the same best params.
  cfg = train.load_config(wd)
  ctx = train.prepare(cfg, wd, train.make_mesh(cfg.mesh), create=False)
  old = train.load_params(final, ctx.model_cfg)
  shutil.rmtree(final)
  os.remove(os.path.join(wd, "DONE"))
  train.run("sft", wd, MICRO + SFT)
  assert _same_tree(train.load_params(final, ctx.model_cfg), old)
  drop = lambda rows: [r for r in rows if not r["phase"].endswith(("_memory", "_teacher"))]
  assert drop(metrics.read_metrics(wd)) == drop(before)


def test_training_curves_plot_the_logged_validation_accuracy(sft_run, tmp_path):
  wd = str(tmp_path / "plot")
  shutil.copytree(sft_run, wd)
  written = plots.plot_training(wd)
  assert os.path.join(wd, "training_curves.png") in written
  assert os.path.getsize(os.path.join(wd, "training_curves.png")) > 0
  rows = metrics.read_metrics(wd, "sft")
  logged = [(r["step"], r["valid_accuracy"]) for r in rows if "valid_accuracy" in r]
  curves = plots.validation_curves(metrics.read_metrics(wd))
  assert list(curves) == ["sft"]
  assert list(zip(*curves["sft"])) == logged


def test_rl_logs_validation_beside_rollout_accuracy(tmp_path):
  wd = str(tmp_path / "rl")
  train.run("grpo", wd, MICRO + ["rl.steps=3", "rl.eval_every=2", "data.num_valid=4",
                                 "rl.select=last"])
  rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rows] == [0, 1, 2]
  assert [r["step"] for r in rows if "valid_accuracy" in r] == [1, 2]  # after 2 and the last
  assert all(math.isfinite(r["accuracy"]) and 0 <= r["accuracy"] <= 1 for r in rows)
  cfg = train.load_config(wd)
  ctx = train.prepare(cfg, wd, train.make_mesh(cfg.mesh), create=False)
  final = train.load_params(train.params_path(wd, "rl"), ctx.model_cfg)
  assert _same_tree(final, _params_at(wd, "rl", 3, final)[0])  # select=last
