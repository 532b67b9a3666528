"""Plug-ins named in the config: the three files of docs/extending.md (examples/) through the
real loop on a tiny model, name resolution, and the CLI setting one reward weight."""

import dataclasses
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import configs, model
from realm_jax.rl import advantages, losses, plugins
from tests import test_rl_loop as harness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GSPO, RLOO, BREVITY = ("examples/gspo_loss.py:gspo_loss", "examples/rloo.py:rloo",
                       "examples/brevity.py:brevity")


@pytest.fixture(autouse=True)
def in_root(monkeypatch):
  """The names above are relative to the working directory (as a user's config names them):
  every test runs from the repository root, wherever pytest was started."""
  monkeypatch.chdir(ROOT)


def _example(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "examples", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_example_loss_and_estimator_agree_with_the_built_ins():
  rng = np.random.default_rng(0)
  logp = jnp.asarray(rng.normal(-2, 0.3, (6, 5)), jnp.float32)
  old = logp + jnp.asarray(rng.normal(0, 0.2, (6, 5)), jnp.float32)
  ref = jnp.asarray(rng.normal(-2, 0.3, (6, 5)), jnp.float32)
  mask = jnp.asarray(np.arange(5)[None] < np.array([5, 3, 1, 4, 2, 5])[:, None])
  adv = jnp.asarray(rng.normal(size=6), jnp.float32)
  cfg = losses.LossConfig(clip_low=0.1, clip_high=0.15, kl_coef=0.05,
                          aggregation="seq_mean_token_mean")
  mine, _ = _example("gspo_loss").gspo_loss(logp, old, adv, mask, cfg, ref_logp_BT=ref)
  built_in, _ = losses.gspo_loss(logp, old, adv, mask, cfg, ref_logp_BT=ref)
  assert float(mine) == pytest.approx(float(built_in), abs=1e-6)
  r = jnp.asarray(rng.integers(0, 3, 12), jnp.float32)
  np.testing.assert_allclose(_example("rloo").rloo(r, 4), advantages.rloo(r, 4), atol=1e-6)


def test_brevity_reward_golden():
  out = _example("brevity").brevity(["q"] * 3, ["<answer>4</answer>", "x" * 50, "<answer>" * 40],
                                    golds=["4"] * 3)
  np.testing.assert_allclose(out, [1 - 18 / 200, 0.0, 0.0], atol=1e-6)


def test_the_three_examples_run_through_the_real_loop():
  cfg = harness.rl_cfg(routes="always", policy_loss=GSPO, advantage=RLOO,
                       reward_weights={BREVITY: 0.2},
                       loss=losses.LossConfig(kl_coef=0.04, clip_low=0.2, clip_high=0.28))
  loop, opt = harness.make_loop(cfg)
  assert loop.loss_fn.__module__.startswith("realm_plugin_")
  params = model.init_params(harness.CFG, jax.random.key(0))
  state = harness.fresh_state(opt)
  state, m = loop.step(state, params, harness.examples(), 0, 0)
  assert int(state.step) == 1 and np.isfinite(m["loss"]) and m["grad_norm"] > 0
  w = cfg.weights()
  want = sum(w[n] * m[f"reward/{n}"] for n in ("answer", "verification", "format", BREVITY))
  assert m["reward"] == pytest.approx(want, abs=1e-6)
  assert m["ratio_max"] == pytest.approx(1.0, abs=1e-5)  # the example's own metric


def test_names_resolve_from_the_built_ins_modules_and_files():
  assert plugins.resolve("rloo", advantages.ADVANTAGES, "advantage") is advantages.rloo
  assert plugins.resolve("realm_jax.rl.losses:ppo_loss", {}, "loss") is losses.ppo_loss
  assert plugins.resolve(losses.gspo_loss, {}, "loss") is losses.gspo_loss
  assert plugins.resolve(RLOO, {}, "advantage").__name__ == "rloo"
  with pytest.raises(ValueError, match="unknown advantage 'nope'; built-in: grpo"):
    plugins.resolve("nope", advantages.ADVANTAGES, "advantage")
  with pytest.raises(ValueError, match="has no function"):
    plugins.resolve("examples/rloo.py:missing", {}, "advantage")
  with pytest.raises(ValueError, match="rl.advantage='nope'"):
    harness.rl_cfg(advantage="nope")


def test_the_cli_sets_one_reward_weight():
  cfg = configs.load_experiment("grpo", ["rl.reward_weights.answer=0.5"])
  assert cfg.rl.reward_weights == {"answer": 0.5}
  assert cfg.rl.weights()["answer"] == 0.5
  assert cfg.rl.weights()["format"] == cfg.rl.mrpv.w_fmt
  with pytest.raises(ValueError, match="finite"):
    dataclasses.replace(cfg.rl, reward_weights={"answer": float("nan")})
