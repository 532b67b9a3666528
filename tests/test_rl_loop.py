"""The RL loop on a tiny model: every RL option does what it must (fake or real sampler)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from realm_jax import model
from realm_jax.data.records import Example, Route
from realm_jax.model import sampling
from realm_jax.rl import eaai, losses, mrpv
from realm_jax.rl import loop as rl_loop
from realm_jax.rl.config import RLConfig
from realm_jax.train import step as train_step

CFG = model.ModelConfig(vocab_size=264, num_layers=1, d_model=16, num_heads=2, num_kv_heads=1,
                        head_dim=8, mlp_dim=32)
MRPV = mrpv.MRPVConfig(num_routes=2, min_positive=1, min_negative=1, all_same_share=0.0,
                       route_template="{label}:{route}", with_routes_template="{question}|{routes}",
                       without_routes_template="{question}", contrast_coef=0.0)
M = 6  # completion slots


class ByteTok:
  """Bytes as ids 3..258; 1 BOS, 2 EOS (the stop token), 0 pad."""
  bos_id, eos_id, pad_id, stop_ids = 1, 2, 0, (2,)

  def encode(self, text, add_bos=False):
    return ([1] if add_bos else []) + [3 + b for b in text.encode()]

  def decode(self, ids, skip_special=True):
    return bytes(i - 3 for i in ids if 3 <= i < 259).decode("utf-8", errors="replace")


def examples(B=4, start=0):
  return [Example(id=f"q{i}", question=f"Q{i}: {i}+1?", answer=str(i + 1), cot=None, domain="t",
                  routes=(Route(f"a\nb\nc\nso {i + 1}", str(i + 1), True, "t"),
                          Route(f"d\ne\nf\nso {i + 7}", str(i + 7), False, "t"),
                          Route(f"g\nh\ni\nso {i + 9}", str(i + 9), False, "t")))
          for i in range(start, start + B)]


def rl_cfg(**kw):
  base = dict(batch_prompts=4, group_size=2, max_new_tokens=M, lr=1e-2, warmup=0,
              loss=losses.LossConfig(kl_coef=0.0), mrpv=MRPV, routes="never")
  return RLConfig(**{**base, **kw})


def make_loop(cfg: RLConfig, eaai_cfg=None, seed=0):
  ctx = rl_loop.RLContext(model_cfg=CFG, tokenizer=ByteTok(), prompt_buckets=(32, 64, 128),
                          route_buckets=(32, 64), seed=seed)
  eaai_cfg = eaai_cfg or eaai.EAAIConfig(max_routes=2, total_steps=4)
  opt = train_step.make_optimizer(cfg.lr, 0, 10, 0.0, 1.0)
  return rl_loop.RLLoop(ctx, cfg, eaai_cfg, opt), opt


def fresh_state(opt, seed=0):
  return train_step.init_state(model.init_params(CFG, jax.random.key(seed)), opt)


def fake_sampler(G, stop_rows=(), token=7):
  """`generate` stand-in: completion k of row r is token + (r + k) % 5 (a stop token ends the
  rows in `stop_rows` after 2 tokens); log q = -1 for every generated token."""

  def generate(params, p_tokens, p_mask, key):
    B, P = p_tokens.shape
    N = B * G
    comp = np.array([[token + (r + k) % 5 for k in range(M)] for r in range(N)], np.int32)
    lengths = np.full(N, M, np.int32)
    for r in stop_rows:
      comp[r, 2], comp[r, 3:], lengths[r] = 2, 0, 3
    cm = np.arange(M)[None] < lengths[:, None]
    rep = lambda x: np.repeat(np.asarray(x), G, axis=0)
    zeros = np.zeros((N, P), np.float32)
    lp = np.concatenate([zeros, np.where(cm, -1.0, 0.0)], 1).astype(np.float32)
    return sampling.Rollout(
        tokens=jnp.asarray(np.concatenate([rep(p_tokens), comp], 1)),
        mask=jnp.asarray(np.concatenate([rep(p_mask).astype(bool), cm], 1)),
        completion_mask=jnp.asarray(np.concatenate([np.zeros((N, P), bool), cm], 1)),
        lengths=jnp.asarray(lengths), logprobs=jnp.asarray(lp), model_logprobs=jnp.asarray(lp),
        truncated=jnp.asarray(lengths == M))

  return generate


def spy_updates(loop):
  """Records every UpdateBatch the loop's update receives (and its metrics)."""
  seen, real = [], loop.update

  def update(state, batch):
    state, m = real(state, batch)
    seen.append((batch, jax.tree.map(np.asarray, m)))
    return state, m

  loop.update = update
  return seen


def test_real_sampler_step_reports_the_metrics():
  loop, opt = make_loop(rl_cfg(routes="always", loss=losses.LossConfig(kl_coef=0.04)))
  params = model.init_params(CFG, jax.random.key(0))
  state = train_step.init_state(jax.tree.map(jnp.copy, params), opt)
  state, m = loop.step(state, params, examples(), 0, 0)
  for k in ("reward", "accuracy", "accuracy_no_routes", "loss", "grad_norm", "eaai_clock",
            "kl_k3", "clip_frac", "entropy", "zero_variance_share", "sampler_trainer_logp_gap",
            "reward/answer", "reward/verification", "reward/format", "p_routes",
            "signal/verification_varies", "signal/verification_only"):
    assert k in m, k
  assert m["p_routes"] == 1.0 and int(state.step) == 1
  # One update from the rollout's own params: the trainer's numbers are the sampler's.
  assert m["sampler_trainer_logp_gap"] < 1e-4 and m["ratio_max"] == pytest.approx(1.0, abs=1e-5)


def prompt_parity(prompts, completions, **_):
  """Reward plug-in: prompts Q0 and Q2 score 1 for every sample (zero variance); the others
  score 1 when the completion starts with byte 4, 6 or 8 (the fake sampler's even rows)."""
  return np.array([1.0 if p.startswith(("Q0", "Q2")) else float(c[:1] in "\x04\x06\x08")
                   for p, c in zip(prompts, completions)], np.float32)


def constant(prompts, completions, **_):
  return np.ones(len(prompts), np.float32)


def run_fake(cfg, stop_rows=(), steps=1, reward="prompt_parity", **loop_kw):
  cfg = dataclasses.replace(cfg, reward_weights={
      "answer": 0.0, "format": 0.0, "verification": 0.0, f"tests.test_rl_loop:{reward}": 1.0})
  loop, opt = make_loop(cfg, **loop_kw)
  loop.generate = fake_sampler(cfg.group_size, stop_rows)
  seen = spy_updates(loop)
  state = fresh_state(opt)
  params = model.init_params(CFG, jax.random.key(0))
  out = []
  for s in range(steps):
    state, m = loop.step(state, params, examples(), s, s)
    out.append(m)
  return loop, state, seen, out


def test_filter_zero_variance_masks_whole_groups_and_they_give_no_gradient():
  # Rows 2g, 2g+1 are group g; completions of even rows start with token 7 (byte 4): reward 1,
  # odd rows with token 8 (byte 5): reward 0. Groups 0 and 2 (Q0, Q2) score 1, 1.
  _, state, seen, (m,) = run_fake(rl_cfg(filter_zero_variance=True))
  cm = np.asarray(seen[0][0].completion_mask)
  assert cm[[0, 1, 4, 5]].sum() == 0 and np.all(cm[[2, 3, 6, 7]].sum(1) == M)
  assert m["zero_variance_share"] == 0.5 and m["kept_share"] == 0.5
  # the plug-in alone (the built-ins weigh 0) moves groups 1 and 3
  assert m["signal/tests.test_rl_loop:prompt_parity_varies"] == 0.5
  assert m["signal/tests.test_rl_loop:prompt_parity_only"] == 0.5
  assert m["signal/answer_only"] == m["signal/verification_only"] == 0.0
  # Only zero-variance groups (and no KL): nothing is trained.
  _, _, seen, (m,) = run_fake(rl_cfg(filter_zero_variance=True), reward="constant")
  assert np.asarray(seen[0][0].completion_mask).sum() == 0
  assert m["grad_norm"] == 0.0 and m["loss"] == 0.0


def test_mask_truncated_drops_exactly_the_truncated_rows():
  _, _, seen, (m,) = run_fake(rl_cfg(mask_truncated=True), stop_rows=(1, 4, 6))
  cm = np.asarray(seen[0][0].completion_mask)
  assert list(np.flatnonzero(cm.sum(1))) == [1, 4, 6]
  assert m["truncated"] == pytest.approx(5 / 8)


@pytest.mark.parametrize("n_mb, inner", [(2, 1), (1, 3), (2, 2)])
def test_minibatches_and_inner_updates_use_the_stored_old_logprobs(n_mb, inner):
  cfg = rl_cfg(num_minibatches=n_mb, num_inner_updates=inner)
  loop, state, seen, _ = run_fake(cfg)
  assert int(state.step) == n_mb * inner and len(seen) == n_mb * inner
  params0 = model.init_params(CFG, jax.random.key(0))
  full = seen[0][0]
  # The old log-probs are the rollout params' (computed once, before any update) ...
  tokens_all = np.concatenate([np.asarray(b.tokens) for b, _ in seen[:n_mb]])
  mask_all = np.concatenate([np.asarray(b.mask) for b, _ in seen[:n_mb]])
  want = train_step.token_logprobs(params0, CFG, jnp.asarray(tokens_all), jnp.asarray(mask_all),
                                   M)
  got = np.concatenate([np.asarray(b.old_logp) for b, _ in seen[:n_mb]])
  np.testing.assert_allclose(got, want, atol=1e-5)
  # ... the same rows carry the same old log-probs in every epoch (only their order changes)
  by_row = {tuple(np.asarray(b.tokens)[i]): np.asarray(b.old_logp)[i]
            for b, _ in seen[:n_mb] for i in range(b.tokens.shape[0])}
  for b, _ in seen[n_mb:]:
    for i in range(b.tokens.shape[0]):
      row = tuple(np.asarray(b.tokens)[i])
      np.testing.assert_array_equal(np.asarray(b.old_logp)[i], by_row[row])
  # ... so the first update sees ratio 1 exactly and a later one (moved params) does not.
  assert seen[0][1]["ratio_max"] == pytest.approx(1.0, abs=1e-5)
  assert abs(float(seen[-1][1]["ratio_mean"]) - 1.0) > 1e-6
  # each minibatch holds whole groups: G rows per prompt, B / n_mb prompts
  assert full.tokens.shape[0] == cfg.batch_prompts * cfg.group_size // n_mb


def test_kl_in_reward_subtracts_the_penalty_before_the_advantages():
  cfg = rl_cfg(loss=losses.LossConfig(kl_coef=0.5, kl_in_reward=True, kl_estimator="k1"))
  loop, opt = make_loop(cfg)
  loop.generate = fake_sampler(2)
  seen = spy_updates(loop)
  params = model.init_params(CFG, jax.random.key(0))
  ref = jax.tree.map(lambda x: x * 1.5, params)
  _, m = loop.step(fresh_state(opt), ref, examples(), 0, 0)
  b = seen[0][0]
  ref_lp = train_step.token_logprobs(ref, CFG, b.tokens, b.mask)
  cm = np.asarray(b.completion_mask[:, 1:]).astype(bool)
  # k1 = sampler log q (-1 per token) - reference log-prob, summed over the completion
  penalty = 0.5 * np.where(cm, -1.0 - np.asarray(ref_lp), 0.0).sum(1)
  task = m["reward/answer"] * 1.0 + m["reward/format"] * 0.1  # routes='never'
  assert m["reward"] == pytest.approx(task - penalty.mean(), rel=1e-4, abs=1e-4)
  assert "kl_k1" in m  # still logged; the loss itself carries no KL term


@pytest.mark.parametrize("channel", ["p_routes", "num_routes", "prefix_fraction"])
def test_every_eaai_channel_fades_the_prompts(channel):
  """At clock 2 of 4 the linear schedule is v = 0.5; each channel alone reads it."""
  flags = dict(fade_probability=channel == "p_routes", fade_count=channel == "num_routes",
               fade_prefix=channel == "prefix_fraction")
  ecfg = eaai.EAAIConfig(max_routes=2, total_steps=4, fade_length=1.0, **flags)
  cfg = rl_cfg(routes="eaai", batch_prompts=64)
  ctx = make_loop(rl_cfg(routes="eaai"), ecfg)[0].ctx
  prompts = rl_loop.make_prompts(examples(64), cfg, ecfg, ctx, 2, np.random.default_rng(0))
  shown = prompts.route_mask.sum(1)
  if channel == "p_routes":  # each prompt with probability 0.5, all K routes, full text
    assert 20 < prompts.show.sum() < 44 and set(shown[prompts.show]) == {2}
  else:  # every prompt carries routes
    assert prompts.show.all()
  assert prompts.num_routes == (1 if channel == "num_routes" else 2)
  assert set(shown[prompts.show]) == {prompts.num_routes}
  assert prompts.prefix_fraction == (0.5 if channel == "prefix_fraction" else 1.0)
  for texts in prompts.route_texts:  # 3 steps + answer line; half the steps: 1 line, no answer
    for t in texts:
      assert t.count("\n") == (0 if channel == "prefix_fraction" else 3)
      assert ("so " in t) == (channel != "prefix_fraction")


@pytest.mark.parametrize("mode", ["eaai", "always", "never"])
def test_every_route_mode(mode):
  ecfg = eaai.EAAIConfig(max_routes=2, total_steps=4, fade_length=1.0)  # clock 2: p = 0.5
  loop, opt = make_loop(rl_cfg(routes=mode, batch_prompts=8), ecfg)
  loop.generate = fake_sampler(2)
  params = model.init_params(CFG, jax.random.key(0))
  _, m = loop.step(fresh_state(opt), params, examples(8), 0, 2)
  want_p = {"always": 1.0, "never": 0.0}.get(mode)
  if want_p is None:
    decisions = eaai.route_decisions(2, ecfg, 8, np.random.default_rng([0, 0]))
    want_p = float(decisions.mean())
  assert m["p_routes"] == want_p
  assert m["num_routes"] == (0 if mode == "never" else 2)
  # Without routes the verification term weighs 0: R = r_ans + 0.1 r_fmt.
  w_ver = 0.0 if mode == "never" else MRPV.w_ver
  want = m["reward/answer"] + w_ver * m["reward/verification"] + 0.1 * m["reward/format"]
  assert m["reward"] == pytest.approx(want, abs=1e-6)
