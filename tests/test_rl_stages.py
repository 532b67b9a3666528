"""Each stage of `rl.loop` alone on typed inputs with hand-computed outputs, RFT rounds on the
shared loop skeleton, and where the EAAI clock and route count come from.

The harness (tiny model, byte tokenizer, fake sampler, `rl_cfg`) is tests/test_rl_loop.py's;
`init` and `as_np` are tests/test_rl_options.py's.
"""

import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from realm_jax import configs
from realm_jax.rl import advantages, eaai, rewards, rft
from realm_jax.rl import batch as rl_batch
from realm_jax.rl import loop as rl_loop
from realm_jax.rl import step as rl_step
from realm_jax.rl.batch import Completions, ScoredBatch
from realm_jax.rl.config import RFTConfig
from realm_jax.train import metrics, sharding, sft
from realm_jax.train import step as train_step
from tests.test_rl_loop import CFG, M, ByteTok, examples, fake_sampler, rl_cfg
from tests.test_rl_options import _update_batch, as_np, init

# ---------------------------------------------------------------------------
# The stages alone, on typed inputs.

CTX = rl_loop.RLContext(model_cfg=CFG, tokenizer=ByteTok(), prompt_buckets=(32, 64),
                        route_buckets=(32, 64), seed=0)
ECFG = eaai.EAAIConfig(max_routes=2, total_steps=4)


def prompts_of(B=2, **kw):
  cfg = rl_cfg(batch_prompts=B, **kw)
  return rl_loop.make_prompts(examples(B), cfg, ECFG, CTX, 0, np.random.default_rng(0))


def comps_of(texts, truncated=None):
  """Completions carrying only `texts` (and truncation flags) for the host stages."""
  N = len(texts)
  zeros = np.zeros((N, 1))
  return Completions(tokens=zeros.astype(np.int32), mask=zeros.astype(bool),
                     completion_mask=zeros.astype(bool), logp=zeros.astype(np.float32),
                     lengths=np.ones(N, np.int32),
                     truncated=np.asarray(truncated if truncated is not None else [0] * N, bool),
                     texts=list(texts))


@pytest.mark.parametrize("greedy", [False, True])
def test_sample_stage_returns_the_rollout_and_its_texts(greedy):
  prompts, fake = prompts_of(), fake_sampler(2, stop_rows=(1,))

  def generate(params, tokens, mask, key):  # the model's own log-probs: -2 per token
    roll = fake(params, tokens, mask, key)
    return roll.replace(model_logprobs=2 * roll.logprobs)
  comps = rl_loop.sample(generate, None, prompts, jax.random.key(0), ByteTok(), greedy=greedy)
  P = prompts.tokens.shape[1]
  np.testing.assert_array_equal(comps.tokens[:, :P], np.repeat(prompts.tokens, 2, 0))
  # completion k of row r is byte 4 + (r + k) % 5; row 1 stops (token 2) after 2 bytes
  want = ["".join(chr(4 + (r + k) % 5) for k in range(2 if r == 1 else M)) for r in range(4)]
  assert comps.texts == want
  assert list(comps.lengths) == [M, 3, M, M] and list(comps.truncated) == [1, 0, 1, 1]
  cm = comps.completion_mask
  assert cm.sum() == 3 * M + 3 and not cm[:, :P].any()
  np.testing.assert_array_equal(comps.logp[cm], -2.0 if greedy else -1.0)  # greedy: log p
  assert not comps.logp[~cm].any()


def test_score_stage_builds_the_reward_matrix_and_its_weighted_sum():
  prompts = prompts_of()  # Q0 (gold 1), Q1 (gold 2), G = 2 samples each
  comps = comps_of(["<answer>1</answer>", "no", "<answer>3</answer>", "<answer>2</answer>"])
  fns = {"answer": rewards.answer_reward,
         "length": lambda prompts, completions, **_: [len(c) for c in completions],
         "gold": lambda prompts, completions, golds, **_: [float(g) for g in golds],
         "prompt": lambda prompts, completions, **_: [float(p.startswith("Q1")) for p in prompts]}
  scored = rl_loop.score(prompts, comps, 2, fns, {"answer": 1.0, "length": 0.5, "gold": -1.0,
                                                  "prompt": 2.0})
  assert scored.names == ("answer", "length", "gold", "prompt")
  np.testing.assert_array_equal(scored.rewards_NR, [[1, 18, 1, 0], [0, 2, 1, 0], [0, 18, 2, 1],
                                                    [1, 18, 2, 1]])
  np.testing.assert_allclose(scored.reward_N, [9, 0, 9, 10])  # 1 a + 0.5 l - g + 2 p
  assert scored.metrics["reward/answer"] == 0.5 and scored.metrics["reward/length"] == 14


@pytest.mark.parametrize("name, want", [
    # groups (1, 0), (3, 0), (2, 2); within-group stds 0.707, 2.121, 0; pooled sqrt(2.5)
    ("grpo", np.array([0.5, -0.5, 1.5, -1.5, 0, 0]) / (math.sqrt(2.5) + 1e-6)),
    ("grpo_group", np.array([0.5, -0.5, 1.5, -1.5, 0, 0]) / (np.array([1, 1, 3, 3, 1, 1])
                                                               * math.sqrt(0.5) + 1e-6)),
    ("drgrpo", np.array([0.5, -0.5, 1.5, -1.5, 0, 0])),
    ("rloo", np.array([1.0, -1.0, 3.0, -3.0, 0, 0])),
])
def test_estimate_advantages_stage_matches_the_estimators_by_hand(name, want):
  reward = np.array([1, 0, 3, 0, 2, 2], np.float32)
  scored = ScoredBatch(rewards_NR=reward[:, None], reward_N=reward, adv_N=np.zeros(6, np.float32),
                       keep_N=np.ones(6, bool), names=("answer",))
  comps = comps_of([""] * 6, truncated=[0, 1, 0, 0, 0, 0])
  out = rl_loop.estimate_advantages(scored, comps, 2, rl_cfg(), advantages.ADVANTAGES[name])
  np.testing.assert_allclose(out.adv_N, want, rtol=1e-5, atol=1e-7)
  assert out.keep_N.all()
  # filtering: the zero-variance group and the truncated row leave the loss
  cfg = rl_cfg(filter_zero_variance=True, mask_truncated=True)
  out = rl_loop.estimate_advantages(scored, comps, 2, cfg, advantages.ADVANTAGES[name])
  assert list(out.keep_N) == [1, 0, 1, 1, 0, 0] and out.metrics["kept_share"] == 0.5
  if name == "drgrpo":  # the KL penalty comes off the reward before the advantages
    out = rl_loop.estimate_advantages(scored, comps, 2, cfg, advantages.ADVANTAGES[name],
                                      np.array([0.5, 0, 0, 0, 0, 0], np.float32))
    np.testing.assert_allclose(out.reward_N, [0.5, 0, 3, 0, 2, 2])
    np.testing.assert_allclose(out.adv_N, [0.25, -0.25, 1.5, -1.5, 0, 0], atol=1e-7)
    assert list(out.keep_N) == [1, 0, 1, 1, 0, 0]  # zero variance is judged on the task reward


def test_route_contrast_stage_margins_of_every_positive_negative_pair():
  """A fake route log-likelihood: params (a scale) x the route's token count n; so
  d = (2 - 0.5) n and each pair's margin is 1.5 (n_pos - n_neg)."""
  prompts = prompts_of(routes="always")  # K = 2: one positive and one negative per prompt
  route_fn = lambda scale, tokens, mask, loss_mask: scale * jnp.sum(loss_mask, 1)  # noqa: E731
  route, m = rl_loop.route_contrast(route_fn, 2.0, 0.5, ByteTok(), prompts, 2, (32, 64), True)
  n = np.array([[len(t.encode()) for t in texts] for texts in prompts.route_texts])
  np.testing.assert_array_equal(np.asarray(route.loss_mask).sum(1), n.reshape(-1))
  np.testing.assert_allclose(np.asarray(route.ref_logp), 0.5 * n)
  np.testing.assert_array_equal(np.asarray(route.labels), prompts.labels)
  np.testing.assert_array_equal(np.asarray(route.valid), prompts.route_mask)
  pos, neg = np.argmax(prompts.labels, 1), np.argmin(prompts.labels, 1)
  margins = 1.5 * (n[[0, 1], pos] - n[[0, 1], neg])
  assert m == {"contrast_margin_mean": pytest.approx(margins.mean()), "contrast_num_pairs": 2.0,
               "contrast_pair_accuracy": float((margins > 0).mean())}
  assert rl_loop.route_contrast(route_fn, 2.0, 0.5, ByteTok(), prompts, 2, (32, 64), False) == (
      None, m)  # metrics only
  none = prompts_of(routes="never")  # nothing shown: no margins; all slots invalid when training
  assert rl_loop.route_contrast(route_fn, 2.0, 0.5, ByteTok(), none, 2, (32, 64), False) == (
      None, {})
  route, m = rl_loop.route_contrast(route_fn, 2.0, 0.5, ByteTok(), none, 2, (32, 64), True)
  assert m == {} and not np.asarray(route.valid).any() and not np.asarray(route.loss_mask).any()


def test_run_updates_stage_walks_whole_groups_epoch_by_epoch():
  cfg = rl_cfg(num_minibatches=2, num_inner_updates=2)  # B = 4 prompts, G = 2
  full = _update_batch(np.arange(4.0)).replace(
      tokens=jnp.repeat(jnp.arange(4, dtype=jnp.int32)[:, None], 10, 1))
  full = rl_batch.concat([full, full.replace(tokens=full.tokens + 4, adv=full.adv + 4)])
  calls = []

  def update(state, mb):
    calls.append(np.asarray(mb.tokens)[:, 0])
    return state + 1, {"x": jnp.float32(len(calls))}
  state, m = rl_loop.run_updates(update, lambda b: b, 0, full, cfg, np.random.default_rng(0))
  assert state == 4 and m == {"x": 2.5}  # metrics: the mean over the 4 updates
  assert [list(c) for c in calls[:2]] == [[0, 1, 2, 3], [4, 5, 6, 7]]  # epoch 0 in order
  assert sorted(np.concatenate(calls[2:])) == list(range(8))  # epoch 1: every row once ...
  for c in calls:  # ... in whole groups of G = 2 rows
    assert all(c[i] // 2 == c[i + 1] // 2 and c[i] % 2 == 0 for i in range(0, len(c), 2))


@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_run_updates_with_zero_advantages_moves_params_only_by_the_decay(wd):
  cfg = rl_cfg(num_inner_updates=2)
  opt = optax.adamw(1e-2, weight_decay=wd)
  update = rl_step.make_rl_step(CFG, opt, cfg.loss, completion_len=M)
  full = rl_batch.concat([_update_batch(np.zeros(4)), _update_batch(np.zeros(4), seed=1)])
  params = as_np(init())
  state, m = rl_loop.run_updates(update, lambda b: b, train_step.init_state(init(), opt), full,
                                 cfg, np.random.default_rng(0))
  assert int(state.step) == 2 and m["grad_norm"] == 0.0
  for got, p0 in zip(jax.tree.leaves(as_np(state.params)), jax.tree.leaves(params)):
    np.testing.assert_allclose(got, p0 * np.float32(1 - 1e-2 * wd) ** 2, rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------
# RFT rounds on the shared skeleton, with a sampler whose even samples are correct.


class RFTSampler:
  """`generation.generate_texts` stand-in: sample j of question "Qi: ..." answers i + 1 (the
  gold) when j is even, i + 51 when odd; records what each round asked for."""

  def __init__(self):
    self.calls = []

  def __call__(self, params, model_cfg, tok, prompts, scfg, batch_size, chat, seed):
    self.calls.append((list(prompts), scfg))
    gold = lambda p: int(p.split(":")[0][1:]) + 1  # noqa: E731
    return [[f"try {j}\n<answer>{gold(p) + (0 if j % 2 == 0 else 50)}</answer>"
             for j in range(scfg.num_samples)] for p in prompts]


def run_rft(cfg, tmp_path, monkeypatch):
  """`rft.run_rft` on 4 questions; (sampler, [(phase, pairs, SFTConfig, params before, after)],
  the rft rows, the workdir)."""
  sampler, runs, real = RFTSampler(), [], sft.run_sft

  def run_sft(phase, ctx, params, pairs, sft_cfg, *args, **kwargs):
    before = as_np(params)
    after = as_np(real(phase, ctx, params, pairs, sft_cfg, *args, **kwargs))
    runs.append((phase, list(pairs), sft_cfg, before, after))
    return jax.tree.map(jnp.asarray, after)
  monkeypatch.setattr(rft.generation, "generate_texts", sampler)
  monkeypatch.setattr(rft.distill, "run_sft", run_sft)
  wd = str(tmp_path)
  ctx = types.SimpleNamespace(cfg=types.SimpleNamespace(rl=rl_cfg(), seed=0), model_cfg=CFG,
                              tokenizer=ByteTok(), data=types.SimpleNamespace(train=examples(4)),
                              chat=False)
  writer = metrics.MetricsWriter(wd)
  mesh = sharding.make_mesh(sharding.MeshConfig(1, 1, 1), jax.devices()[:1])
  sft_ctx = sft.SFTContext(model_cfg=CFG, tokenizer=ByteTok(), workdir=wd, writer=writer,
                           buckets=(64,), seed=0, mesh=mesh, checkpoint_every=0)
  try:
    rft.run_rft(ctx, sft_ctx, init(), cfg)
  finally:
    writer.close()
  return sampler, runs, metrics.read_metrics(wd, "rft"), wd


def test_rft_rounds_sample_filter_and_train_on_the_skeleton(tmp_path, monkeypatch):
  cfg = RFTConfig(rounds=2, questions=2, samples_per_question=3, temperature=0.7,
                  steps_per_round=2, batch_size=3, lr=1e-3, warmup=0, max_new_tokens=9)
  sampler, runs, rows, wd = run_rft(cfg, tmp_path, monkeypatch)
  # rounds: 2 rounds, each on the next `questions` questions of the training set
  assert [prompts for prompts, _ in sampler.calls] == [["Q0: 0+1?", "Q1: 1+1?"],
                                                      ["Q2: 2+1?", "Q3: 3+1?"]]
  for _, scfg in sampler.calls:  # samples_per_question, temperature, max_new_tokens
    assert (scfg.num_samples, scfg.temperature, scfg.max_new_tokens) == (3, 0.7, 9)
  # samples 0 and 2 of each question are correct (and distinct): 2 x 2 pairs per round
  assert [(r["step"], r["kept_samples"], r["questions"]) for r in rows] == [(0, 4, 2), (1, 4, 2)]
  for r, (phase, pairs, sft_cfg, before, after) in enumerate(runs):
    assert phase == f"rft{r}"
    assert sorted(pairs) == sorted((f"Q{i}: {i}+1?", f"try {j}\n<answer>{i + 1}</answer>")
                                   for i in (2 * r, 2 * r + 1) for j in (0, 2))
    assert (sft_cfg.steps, sft_cfg.batch_size, sft_cfg.lr, sft_cfg.warmup) == (2, 3, 1e-3, 0)
    # steps_per_round updates ran (one metrics row each), from the previous round's params
    assert [row["step"] for row in metrics.read_metrics(wd, phase) if "loss" in row] == [0, 1]
    assert not all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before),
                                                        jax.tree.leaves(after)))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(runs[0][4]),
                                                  jax.tree.leaves(runs[1][3])))
  assert len(runs) == 2


@pytest.mark.parametrize("warmup", [0, 4])
def test_rft_lr_and_warmup_set_the_first_update(warmup, tmp_path, monkeypatch):
  """Adam's first update is lr_0 * g / (|g| + eps) = lr_0 * sign(g) plus the decoupled decay
  lr_0 * wd * p, with lr_0 = lr (no warm-up) or lr / warmup (`train.step.lr_schedule`)."""
  lr = 1e-3
  cfg = RFTConfig(rounds=1, questions=4, samples_per_question=2, steps_per_round=1,
                  batch_size=4, lr=lr, warmup=warmup)
  sampler, runs, rows, _ = run_rft(cfg, tmp_path, monkeypatch)
  assert sampler.calls[0][1].max_new_tokens == M  # max_new_tokens unset: rl.max_new_tokens
  (_, _, sft_cfg, before, after), = runs
  lr_0 = lr / warmup if warmup else lr
  steps = [np.abs(a - b + lr_0 * sft_cfg.weight_decay * b).max()
           for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
  assert max(steps) == pytest.approx(lr_0, rel=1e-3)


def test_rft_options_parse_and_are_checked():
  cfg = configs.load_experiment("rft", ["rft.warmup=2", "rft.max_new_tokens=12"]).rft
  assert (cfg.warmup, cfg.max_new_tokens) == (2, 12)
  default = configs.load_experiment("rft").rft
  assert (default.warmup, default.max_new_tokens) == (5, None)  # the behaviour before: 5, rl's
  for bad, match in (("rft.warmup=-1", "rft.warmup=-1 must be >= 0"),
                     ("rft.max_new_tokens=0", "rft.max_new_tokens=0 must be > 0")):
    with pytest.raises(ValueError, match=match):
      configs.load_experiment("rft", [bad])


# ---------------------------------------------------------------------------
# The EAAI horizon and route count: from the run unless set.


def test_eaai_total_steps_and_max_routes_come_from_the_run_unless_set(tmp_path):
  e = configs.load_experiment("demo", ["rl.steps=7"]).eaai_config()
  assert e.total_steps == 7
  # linear over the first 60% of 7 steps: v(2) = 1 - 2 / 4.2
  assert float(eaai.external_signal(2, e)[0]) == pytest.approx(1 - 2 / 4.2, abs=1e-6)
  e = configs.load_experiment("demo", ["rl.steps=7", "rl.eaai.total_steps=3",
                                       "rl.eaai.max_routes=1"]).eaai_config()
  assert (e.total_steps, e.max_routes) == (3, 1)  # explicit values win
  assert float(eaai.external_signal(2, e)[0]) == 0.0  # the fade ended at step 1.8 of 3
  assert int(eaai.external_signal(0, e)[1]) == 1
  # An experiment that leaves max_routes unset gets rl.mrpv.num_routes.
  path = tmp_path / "plain_eaai.py"
  path.write_text("import dataclasses\nfrom experiments import demo\nfrom realm_jax.rl import "
                  "eaai\n\n\ndef get_config():\n  cfg = demo.get_config()\n  return dataclasses."
                  "replace(cfg, rl=dataclasses.replace(cfg.rl, eaai=eaai.EAAIConfig()))\n")
  for k in (1, 2):
    e = configs.load_experiment(str(path), [f"rl.mrpv.num_routes={k}", "rl.mrpv.min_negative=0",
                                            "rl.steps=7"]).eaai_config()
    assert (e.max_routes, e.total_steps) == (k, 7)
  e = configs.load_experiment(str(path), ["rl.eaai.max_routes=1"]).eaai_config()
  assert e.max_routes == 1 and configs.load_experiment(str(path)).rl.mrpv.num_routes == 2
