"""Every RL option does what it says, through the real loop on a tiny model (the stages alone
and RFT: tests/test_rl_stages.py).

The harness (tiny model, byte tokenizer, fake sampler, `rl_cfg`) is tests/test_rl_loop.py's.
"""

import dataclasses
import functools
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from realm_jax import configs, model
from realm_jax.data.config import DataConfig
from realm_jax.model import sampling
from realm_jax.rl import eaai, losses, stage
from realm_jax.rl import loop as rl_loop
from realm_jax.rl import step as rl_step
from realm_jax.rl.batch import UpdateBatch
from realm_jax.train import metrics, sharding
from realm_jax.train import step as train_step
from tests.test_rl_loop import (CFG, MRPV, M, ByteTok, examples, fake_sampler, make_loop, rl_cfg,
                                spy_updates)

CONSTANT = {"answer": 0.0, "format": 0.0, "verification": 0.0,
            "tests.test_rl_loop:constant": 1.0}  # every sample scores 1: all advantages 0


def as_np(tree):
  return jax.tree.map(np.array, tree)


@functools.lru_cache(maxsize=None)
def _init(seed):
  return as_np(jax.jit(lambda key: model.init_params(CFG, key))(jax.random.key(seed)))


def init(seed=0):
  """The tiny model's params, fresh device buffers each call (steps donate theirs)."""
  return jax.tree.map(jnp.asarray, _init(seed))


_logits = jax.jit(lambda params, tokens, mask: model.apply(params, CFG, tokens, mask)[0])


def logits_of(params, tokens, mask):
  """The model's next-token logits [N, T-1, V] (float64 numpy)."""
  return np.asarray(_logits(params, tokens, mask)[:, :-1], np.float64)


def spy_prompts(monkeypatch):
  """Records every PromptBatch the loop builds (stage 1)."""
  seen, real = [], rl_loop.make_prompts

  def make_prompts(*args, **kwargs):
    seen.append(real(*args, **kwargs))
    return seen[-1]

  monkeypatch.setattr(rl_loop, "make_prompts", make_prompts)
  return seen


def fake_step(cfg, monkeypatch, ecfg=None, clock=0, B=4, ref=None, generate=None):
  """One RLLoop.step with the fake sampler (or `generate`); (metrics, prompts, updates seen).

  Every prompt fits one bucket of 64 tokens: the tests share their compiled programs."""
  prompts = spy_prompts(monkeypatch)
  loop, opt = make_loop(cfg, ecfg)
  loop.ctx = dataclasses.replace(loop.ctx, prompt_buckets=(64,))
  loop.generate = generate or fake_sampler(cfg.group_size)
  seen = spy_updates(loop)
  params = init()
  state = train_step.init_state(init(), opt)
  _, m = loop.step(state, params if ref is None else ref(params), examples(B), 0, clock)
  return m, prompts[0], seen


# ---------------------------------------------------------------------------
# Sampling options: the rollout is drawn from q and scored under q.


def _log_softmax(x, support=None):
  x = x if support is None else np.where(support, x, -np.inf)
  top = x.max(-1, keepdims=True)
  return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def test_rl_temperature_top_k_top_p_draw_from_q_and_the_trainer_scores_q():
  """q = softmax(l / T) on the top k, then on the smallest most likely set of mass >= p."""
  T, k, p = 0.7, 5, 0.5
  loop, opt = make_loop(rl_cfg(temperature=T, top_k=k, top_p=p))
  seen = spy_updates(loop)
  params = init()
  _, m = loop.step(train_step.init_state(jax.tree.map(jnp.copy, params), opt), params,
                   examples(), 0, 0)
  b = seen[0][0]
  targets, cm = np.asarray(b.tokens)[:, 1:, None], np.asarray(b.completion_mask)[:, 1:] > 0
  logits = logits_of(params, b.tokens, b.mask)
  x = logits / T
  top_k = x >= np.sort(x, -1)[..., -k, None]
  probs = np.exp(_log_softmax(x, top_k))
  mass_before = (probs * (probs > np.take_along_axis(probs, targets, -1))).sum(-1)
  assert ((x > np.take_along_axis(x, targets, -1)).sum(-1) < k)[cm].all()  # inside the top k
  assert (mass_before < p)[cm].all()  # and inside the nucleus
  desc = -np.sort(-probs, -1)  # the nucleus: probs down to the first with mass_before >= p
  smallest = np.min(np.where(np.cumsum(desc, -1) - desc < p, desc, np.inf), -1, keepdims=True)
  nucleus = top_k & (probs >= smallest)
  log_q = np.take_along_axis(_log_softmax(x, nucleus), targets, -1)[..., 0]
  sampler = np.asarray(b.sampler_logp)
  np.testing.assert_allclose(sampler[cm], log_q[cm], atol=2e-4)  # the sampler recorded log q
  assert m["sampler_trainer_logp_gap"] < 1e-4  # ... and the trainer scored the rollout under q
  untempered = np.take_along_axis(_log_softmax(logits), targets, -1)[..., 0]
  assert np.abs(untempered - sampler)[cm].mean() > 0.1  # the model's own p is far from q


def seq_loglik(params, tokens, mask, loss_mask):
  """Sum of log softmax(model logits)[next token] over loss_mask[:, 1:], by hand (numpy)."""
  logits = logits_of(params, tokens, mask)
  lp = np.take_along_axis(_log_softmax(logits), np.asarray(tokens)[:, 1:, None], -1)[..., 0]
  return np.where(np.asarray(loss_mask)[:, 1:] > 0, lp, 0.0).sum(-1)


def token_logp(params, b):
  logits = logits_of(params, b.tokens, b.mask)
  return np.take_along_axis(_log_softmax(logits), np.asarray(b.tokens)[:, 1:, None], -1)[..., 0]


# ---------------------------------------------------------------------------
# Through run_rl (the RL stage on the shared skeleton): weight decay, patience, min_delta.


def run_stage(rl, tmp_path, monkeypatch, validate=None):
  """`stage.run_rl` on the tiny model (fake sampler, 8 questions); (final params, rl rows)."""
  monkeypatch.setattr(sampling, "make_generate_fn", lambda *a, **k: fake_sampler(rl.group_size))
  cfg = configs.ExperimentConfig(rl=rl, mesh=(1, 1, 1), checkpoint_every=0, keep_checkpoints=1,
                                 data=DataConfig(prompt_buckets=(64,), sft_buckets=(32,)))
  ctx = types.SimpleNamespace(cfg=cfg, model_cfg=CFG, tokenizer=ByteTok(), chat=False,
                              mesh=sharding.make_mesh(sharding.MeshConfig(1, 1, 1),
                                                      jax.devices()[:1]),
                              data=types.SimpleNamespace(train=examples(8)))
  writer = metrics.MetricsWriter(str(tmp_path))
  try:
    params = stage.run_rl(ctx, str(tmp_path), writer, init(), "init", validate)
  finally:
    writer.close()
  return as_np(params), [r for r in metrics.read_metrics(str(tmp_path), "rl") if "loss" in r]


def stage_cfg(**kw):  # one compiled program for every run_stage test (these are host-side)
  return rl_cfg(steps=4, weight_decay=0.1, reward_weights=CONSTANT, **kw)


def test_rl_weight_decay_shrinks_params_by_the_decoupled_factor(tmp_path, monkeypatch):
  # All rewards equal: advantages 0, kl 0, so every gradient is 0 and AdamW's only move is
  # p <- (1 - lr_t wd) p, with lr_t = lr/10 + 0.9 lr (1 + cos(pi t / 4)) / 2 (no warm-up).
  params, rows = run_stage(stage_cfg(), tmp_path, monkeypatch)
  assert [r["step"] for r in rows] == [0, 1, 2, 3] and all(r["grad_norm"] == 0 for r in rows)
  lr, wd = 1e-2, 0.1
  factor = np.prod([1 - wd * (lr / 10 + 0.9 * lr * (1 + math.cos(math.pi * t / 4)) / 2)
                    for t in range(4)])
  for got, p0 in zip(jax.tree.leaves(params), jax.tree.leaves(as_np(init()))):
    np.testing.assert_allclose(got, p0 * factor, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("values, min_delta, validations", [
    ([0.5] * 4, 0.0, 3),                          # never improves: 1 + patience validations
    ([0.1 + 0.02 * i for i in range(4)], 0.05, 3),  # gains below min_delta do not count
    ([0.1 + 0.02 * i for i in range(4)], 0.01, 4),  # gains above it: all 4 steps run
])
def test_rl_patience_and_min_delta_stop_the_rl_stage(values, min_delta, validations, tmp_path,
                                                     monkeypatch):
  calls = []

  def validate(params):
    calls.append(len(calls))
    return {"valid_accuracy": values[len(calls) - 1]}
  rl = stage_cfg(eval_every=1, patience=2, min_delta=min_delta, select="last")
  _, rows = run_stage(rl, tmp_path, monkeypatch, validate)
  # The first validation sets the best; the stage stops after `patience` more without a gain.
  assert len(calls) == validations and [r["step"] for r in rows] == list(range(validations))
  assert [r["valid_accuracy"] for r in rows] == values[:validations]


# ---------------------------------------------------------------------------
# Through RLLoop.step: negatives, EAAI channels, contrast_beta, tis_cap.


BETA = 2.0
CONTRAST = dict(routes="always", mrpv=dataclasses.replace(MRPV, contrast_coef=1.0,
                                                          contrast_beta=BETA))
ref_of = lambda p: jax.tree.map(lambda x: 1.5 * x, p)  # noqa: E731  (a reference unlike p)


@pytest.mark.parametrize("negatives", [False, True])
def test_rl_negatives_false_shows_the_policy_only_positive_routes(negatives, monkeypatch):
  m, prompts, seen = fake_step(rl_cfg(negatives=negatives, **CONTRAST), monkeypatch, ref=ref_of)
  labels = prompts.labels[prompts.route_mask]
  for ex, texts, prompt in zip(prompts.examples, prompts.route_texts, prompts.texts):
    negs = [r.text for r in ex.routes if not r.positive]
    assert texts and any(n in prompt for n in negs) == negatives
    if not negatives:
      assert texts == [r.text for r in ex.routes if r.positive]  # the one positive route
  # The contrast term trains on exactly these labels: without negatives no pair is left.
  np.testing.assert_array_equal(np.asarray(seen[0][0].route.labels), prompts.labels)
  assert labels.all() != negatives
  assert (m["contrast_num_pairs"] > 0) == negatives


@pytest.mark.parametrize("channel", ["p_routes", "num_routes", "prefix_fraction"])
def test_every_eaai_channel_through_the_loop(channel, monkeypatch):
  """Clock 2 of 4, linear over the whole run: v = 0.5 on the channel that fades, 1 elsewhere."""
  ecfg = eaai.EAAIConfig(max_routes=2, total_steps=4, fade_length=1.0,
                         fade_probability=channel == "p_routes",
                         fade_count=channel == "num_routes",
                         fade_prefix=channel == "prefix_fraction")
  m, prompts, seen = fake_step(rl_cfg(routes="eaai"), monkeypatch, ecfg, clock=2)
  shown = prompts.route_mask.sum(1)
  assert m["p_routes"] == prompts.show.mean() and m["eaai_clock"] == 2
  assert (0 < m["p_routes"] < 1) if channel == "p_routes" else m["p_routes"] == 1.0
  assert m["num_routes"] == (1 if channel == "num_routes" else 2)  # ceil(2 * 0.5)
  assert set(shown[prompts.show]) == {m["num_routes"]} and not shown[~prompts.show].any()
  assert m["prefix_fraction"] == (0.5 if channel == "prefix_fraction" else 1.0)
  for texts, prompt in zip(prompts.route_texts, prompts.texts):
    for t in texts:  # 3 steps + the answer line; half of it: the first step only
      assert t in prompt and t.count("\n") == (0 if channel == "prefix_fraction" else 3)
  assert math.isnan(m["accuracy_no_routes"]) != (channel == "p_routes")
  # The update trains on rollouts of exactly these prompts (G rows each).
  P = prompts.tokens.shape[1]
  np.testing.assert_array_equal(np.asarray(seen[0][0].tokens)[:, :P],
                                np.repeat(prompts.tokens, 2, 0))


def test_rl_contrast_beta_enters_the_contrast_loss_as_documented(monkeypatch):
  """contrast_loss = mean over (pos, neg) pairs of -log sigmoid(beta * (d_pos - d_neg)),
  d = policy - reference route log-likelihood."""
  params = init()
  m, prompts, seen = fake_step(rl_cfg(**CONTRAST), monkeypatch, ref=ref_of)
  r, (B, K) = seen[0][0].route, prompts.labels.shape
  ref = seq_loglik(ref_of(params), r.tokens, r.mask, r.loss_mask).reshape(B, K)
  np.testing.assert_allclose(np.asarray(r.ref_logp), ref, rtol=1e-5)
  d = seq_loglik(params, r.tokens, r.mask, r.loss_mask).reshape(B, K) - ref
  pos, neg = prompts.route_mask & prompts.labels, prompts.route_mask & ~prompts.labels
  margins = [d[b, p] - d[b, q] for b in range(B) for p in range(K) for q in range(K)
             if pos[b, p] and neg[b, q]]
  assert len(margins) == m["contrast_num_pairs"] > 0
  loss = lambda beta: np.mean([math.log1p(math.exp(-beta * x)) for x in margins])  # noqa
  assert m["contrast_loss"] == pytest.approx(loss(BETA), rel=1e-5)
  assert m["contrast_loss"] != pytest.approx(loss(0.1), rel=1e-3)  # the default beta's value


def test_rl_tis_cap_weights_the_loop_update_by_the_truncated_ratio(monkeypatch):
  fake = fake_sampler(2)

  def generate(*args):  # odd rows: the sampler says log q = -8 per token, even rows -1
    roll = fake(*args)
    lp = np.asarray(roll.logprobs).copy()
    lp[1::2] *= 8
    return roll.replace(logprobs=jnp.asarray(lp), model_logprobs=jnp.asarray(lp))
  m, _, seen = fake_step(rl_cfg(loss=losses.LossConfig(kl_coef=0.0, tis_cap=2.0)), monkeypatch,
                         generate=generate)
  params, b = init(), seen[0][0]
  cm = np.asarray(b.completion_mask)[:, 1:] > 0
  ratio = np.exp(token_logp(params, b) - np.asarray(b.sampler_logp))  # trainer / sampler
  assert 0 < (ratio > 2.0)[cm].mean() < 1  # some tokens capped, some not
  assert m["tis_weight_mean"] == pytest.approx(np.minimum(ratio, 2.0)[cm].mean(), rel=1e-4)
  assert m["tis_capped_frac"] == pytest.approx((ratio > 2.0)[cm].mean(), abs=1e-6)


def _update_batch(adv, sampler_logp=None, seed=0):
  """4 rollouts of 4 prompt + M completion tokens (row 3 stopped after 4), random tokens."""
  rng = np.random.default_rng(seed)
  N, T = 4, 4 + M
  cm = np.zeros((N, T), np.int32)
  cm[:, 4:] = 1
  cm[3, 8:] = 0
  return UpdateBatch(tokens=jnp.asarray(rng.integers(3, 259, (N, T)), jnp.int32),
                     mask=jnp.asarray(np.arange(T)[None] < np.where(cm[:, -1:], T, 8)),
                     completion_mask=jnp.asarray(cm), adv=jnp.asarray(adv, jnp.float32),
                     ref_logp=jnp.zeros((N, T - 1), jnp.float32),
                     sampler_logp=None if sampler_logp is None else jnp.asarray(sampler_logp))


def test_tis_branch_of_the_policy_loss_equals_the_hand_weighted_loss():
  """w_bt = min(exp(old - sampler), C) on each token's loss. With one shift d_b per sequence,
  w_b is constant in the sequence, so the TIS loss with advantages A equals the plain loss
  with A_b w_b (loss and gradient); a sampler that agrees with the trainer gives w = 1."""
  params, C = init(), 2.0
  adv, d = np.array([1.0, -0.5, 0.8, -1.2]), np.array([0.5, -0.3, 2.0, 0.2])
  base = _update_batch(adv)
  trainer = rl_step.make_logprob_fn(CFG, None, M)(params, base.tokens, base.mask)
  cm = np.asarray(base.completion_mask)[:, 1:] > 0
  tis, plain = losses.LossConfig(tis_cap=C), losses.LossConfig()
  grad = jax.jit(jax.value_and_grad(lambda p, b, c: rl_step.policy_loss(p, b, CFG, c, M)[0]),
                 static_argnums=2)
  w = np.minimum(np.exp(d), C)  # [1.649, 0.741, 2 (capped from 7.39), 1.221]
  got = grad(params, _update_batch(adv, np.where(cm, trainer - d[:, None], 0.0)), tis)
  want = grad(params, _update_batch(adv * w), plain)
  # ratio 1 at the rollout's params: loss = -sum_bt m_bt w_b A_b / sum_bt m_bt (token_mean)
  hand = -(cm.sum(1) * w * adv).sum() / cm.sum()
  assert float(got[0]) == pytest.approx(hand, rel=1e-5)
  assert float(want[0]) == pytest.approx(hand, rel=1e-5)
  for g, h in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-7)
  same = grad(params, _update_batch(adv, np.where(cm, trainer, 0.0)), tis)
  unweighted = grad(params, base, plain)
  assert float(same[0]) == pytest.approx(float(unweighted[0]), rel=1e-6)
  for g, h in zip(jax.tree.leaves(same[1]), jax.tree.leaves(unweighted[1])):
    np.testing.assert_allclose(g, h, rtol=1e-4, atol=1e-7)
  # The jitted update takes the same branch: its loss, weights and gradient norm.
  step = rl_step.make_rl_step(CFG, optax.sgd(0.0), tis, completion_len=M)
  _, m = step(train_step.init_state(params, optax.sgd(0.0)),
              _update_batch(adv, np.where(cm, trainer - d[:, None], 0.0)))
  assert float(m["loss"]) == pytest.approx(hand, rel=1e-5)
  assert float(m["tis_weight_mean"]) == pytest.approx((cm.sum(1) * w).sum() / cm.sum(), rel=1e-5)
  assert float(m["grad_norm"]) == pytest.approx(float(optax.global_norm(want[1])), rel=1e-4)
