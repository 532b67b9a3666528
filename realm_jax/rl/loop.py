"""The RL loop: MRPV prompts under the EAAI schedule, GRPO-family updates.

One step is six stages, each a function of typed inputs (`rl.batch`), run in
order by `RLLoop.step`:
  1. `make_prompts`: EAAI decisions (p_routes, K, prefix) and MRPV prompts
     (routes sampled, shuffled, truncated), tokenized into a bucket.
  2. `sample`: the compiled sampler (any `fn(params, tokens, mask, key) ->
     sampling.Rollout`: tests pass a fake) and the decoded completions.
  3. `score`: the [N, R] reward matrix of the configured reward functions, weighted.
  4. `estimate_advantages`: the KL penalty (kl_in_reward), the advantage
     estimator, and which rows enter the loss (zero-variance groups, truncation).
     With dynamic sampling, `refill` replaces filtered groups by fresh ones.
  5. `route_contrast`: teacher-forced route log-likelihoods of policy and
     reference, margins over every (positive, negative) pair.
  6. `run_updates`: `num_inner_updates` x `num_minibatches` jitted updates.
Host side except the sampler, log-probs and updates (jit). Row layout
prompt-major throughout (`rl.batch`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax.data import pipeline as data
from realm_jax.data.records import Example
from realm_jax.model import sampling
from realm_jax.rl import advantages, batch as rl_batch, corpus, eaai, losses, mrpv, plugins, rewards
from realm_jax.rl import step as rl_step
from realm_jax.rl.batch import Completions, PromptBatch, RouteBatch, ScoredBatch, UpdateBatch
from realm_jax.rl.config import RLConfig
from realm_jax.train import metrics as metrics_lib
from realm_jax.train import sharding, step as train_step
from realm_jax.train.generation import completion_texts, encode_prompts


@dataclasses.dataclass
class RLContext:
  model_cfg: Any
  tokenizer: Any
  prompt_buckets: tuple[int, ...]
  route_buckets: tuple[int, ...]
  seed: int
  chat: bool = False


def route_plan(cfg: RLConfig, eaai_cfg: eaai.EAAIConfig, clock: int, rng: np.random.Generator,
               B: int) -> tuple[np.ndarray, int, float]:
  """(which prompts carry routes [B], how many, prefix fraction) under `cfg.routes`."""
  K = cfg.mrpv.num_routes
  if cfg.routes == "never":
    return np.zeros(B, bool), 0, 1.0
  if cfg.routes == "always":
    return np.ones(B, bool), K, 1.0
  _, k, frac = eaai.external_signal(clock, eaai_cfg)
  return eaai.route_decisions(clock, eaai_cfg, B, rng), min(int(k), K), float(frac)


def make_prompts(examples: list[Example], cfg: RLConfig, eaai_cfg: eaai.EAAIConfig,
                 ctx: RLContext, clock: int, rng: np.random.Generator) -> PromptBatch:
  """Stage 1: EAAI decisions and the MRPV prompt of every example."""
  B, K = len(examples), cfg.mrpv.num_routes
  show, k_show, frac = route_plan(cfg, eaai_cfg, clock, rng, B)
  texts, shown, labels_BK, mask_BK = [], [], np.zeros((B, K), bool), np.zeros((B, K), bool)
  for b, ex in enumerate(examples):
    prompt, labels, routes = corpus.route_prompt(ex, rng, cfg.mrpv, k_show if show[b] else 0,
                                                 frac, negatives=cfg.negatives)
    texts.append(prompt)
    shown.append(routes)
    labels_BK[b, :len(labels)] = labels
    mask_BK[b, :len(labels)] = True
  tokens, mask, too_long = encode_prompts(ctx.tokenizer, texts, ctx.prompt_buckets, ctx.chat)
  return PromptBatch(tokens=tokens, mask=mask, show=mask_BK.any(axis=1), labels=labels_BK,
                     route_mask=mask_BK, texts=texts, route_texts=shown, examples=list(examples),
                     num_routes=k_show, prefix_fraction=frac, too_long=too_long)


def sample(generate: Callable, params, prompts: PromptBatch, key: jax.Array, tok,
           batch_sharding=None, greedy: bool = False) -> Completions:
  """Stage 2: G completions of each prompt (`generate` is the compiled sampler or a fake).

  `Completions.logp` is the sampler's log q; a greedy sampler's q is a point mass
  (log q = 0), so there it is the model's log-probs (what the trainer scores).
  """
  p_tokens, p_mask = prompts.tokens, prompts.mask
  if batch_sharding is not None:  # global prompt arrays, split over the batch axes
    p_tokens, p_mask = (sharding.put(x, batch_sharding) for x in (p_tokens, p_mask))
  roll = generate(params, jnp.asarray(p_tokens), jnp.asarray(p_mask), key)
  host = {f: sharding.to_host(getattr(roll, f)) for f in
          ("tokens", "mask", "completion_mask", "lengths", "truncated")}
  logp = sharding.to_host(roll.model_logprobs if greedy else roll.logprobs)
  return Completions(tokens=host["tokens"], mask=host["mask"].astype(bool),
                     completion_mask=host["completion_mask"].astype(bool), logp=logp,
                     lengths=host["lengths"], truncated=host["truncated"].astype(bool),
                     texts=completion_texts(tok, roll))


def reward_columns(prompts: PromptBatch, comps: Completions, G: int) -> dict[str, Any]:
  """The columns every reward function may read (see `rl.rewards`), N rows each."""
  rep = lambda x: np.repeat(x, G, axis=0)
  return {"golds": [ex.answer for ex in prompts.examples for _ in range(G)],
          "routes_shown": rep(prompts.show),
          "verdicts": mrpv.parse_verdicts_batch(comps.texts, prompts.labels.shape[1]),
          "route_labels": rep(prompts.labels), "route_mask": rep(prompts.route_mask)}


def score(prompts: PromptBatch, comps: Completions, G: int, reward_fns: dict[str, Callable],
          weights: dict[str, float]) -> ScoredBatch:
  """Stage 3: the reward matrix R_NR of `reward_fns` and its weighted sum."""
  texts_N = [t for t in prompts.texts for _ in range(G)]
  r_NR, names, metrics = rewards.reward_matrix(reward_fns, texts_N, comps.texts,
                                               reward_columns(prompts, comps, G))
  reward_N = rewards.combine(r_NR, [weights[n] for n in names])
  N = len(reward_N)
  return ScoredBatch(rewards_NR=r_NR, reward_N=reward_N, adv_N=np.zeros(N, np.float32),
                     keep_N=np.ones(N, bool), names=tuple(names), metrics=metrics)


def estimate_advantages(scored: ScoredBatch, comps: Completions, G: int, cfg: RLConfig,
                        advantage_fn: Callable, kl_penalty_N: np.ndarray | None = None
                        ) -> ScoredBatch:
  """Stage 4: reward minus the KL penalty (if given), advantages, the rows that count."""
  reward_N = scored.reward_N if kl_penalty_N is None else scored.reward_N - kl_penalty_N
  adv_N = np.asarray(advantage_fn(jnp.asarray(reward_N), G), np.float32)
  keep = np.ones(len(reward_N), bool)
  if cfg.filter_zero_variance:  # per group [B] on the task reward: all G samples leave
    keep &= ~np.repeat(np.asarray(advantages.zero_variance_mask(scored.reward_N, G)), G)
  if cfg.mask_truncated:
    keep &= ~comps.truncated
  metrics = {k: float(v) for k, v in advantages.group_metrics(reward_N, adv_N, G).items()}
  return scored.replace(reward_N=reward_N, adv_N=adv_N, keep_N=keep,
                        metrics=dict(scored.metrics, **metrics, kept_share=float(keep.mean())))


def route_batch(tok, prompts: PromptBatch, K: int, buckets, shown: bool = True) -> dict:
  """[B*K, S] teacher-forced inputs: question context, then the route (loss mask on the route)."""
  rows, loss_rows = [], []
  for ex, texts in zip(prompts.examples, prompts.route_texts):
    ctx = tok.encode(ex.question + "\n", add_bos=True)
    for k in range(K):
      r = tok.encode(texts[k]) if shown and k < len(texts) else []
      row = (ctx + r)[:buckets[-1]]  # too long: the route's tail is cut, the question kept
      rows.append(row)
      loss_rows.append(max(len(row) - len(ctx), 0))  # the route tokens left after the cut
  length = data.bucket_length(max(len(r) for r in rows), buckets)
  tokens, mask = data.pad_left(rows, length, tok.pad_id)
  loss_mask = np.zeros_like(mask)
  for i, n in enumerate(loss_rows):
    if n:
      loss_mask[i, length - n:] = 1
  return {"tokens": tokens, "mask": mask, "loss_mask": loss_mask}


def route_contrast(route_fn: Callable, params, ref_params, tok, prompts: PromptBatch, K: int,
                   buckets, train: bool) -> tuple[RouteBatch | None, dict[str, float]]:
  """Stage 5: contrast margins of the shown routes (metrics); the RouteBatch when `train`
  (all slots invalid when no prompt shows routes, so shapes stay static)."""
  B, metrics = len(prompts.examples), {}
  if not prompts.show.any():
    if not train:
      return None, metrics
    arrays = {k: jnp.asarray(v) for k, v in route_batch(tok, prompts, K, buckets, False).items()}
    return RouteBatch(**arrays, ref_logp=jnp.zeros((B, K), jnp.float32),
                      labels=jnp.asarray(prompts.labels), valid=jnp.asarray(prompts.route_mask)
                      ), metrics
  arrays = {k: jnp.asarray(v) for k, v in route_batch(tok, prompts, K, buckets).items()}
  ref_r = route_fn(ref_params, arrays["tokens"], arrays["mask"], arrays["loss_mask"]).reshape(B, K)
  pol_r = route_fn(params, arrays["tokens"], arrays["mask"], arrays["loss_mask"]).reshape(B, K)
  margins, pair_mask = mrpv.route_pair_margins(pol_r, ref_r, prompts.labels, prompts.route_mask)
  metrics = {f"contrast_{k}": float(np.asarray(v))
             for k, v in mrpv.contrast_metrics(margins, pair_mask).items()}
  route = RouteBatch(**arrays, ref_logp=ref_r, labels=jnp.asarray(prompts.labels),
                     valid=jnp.asarray(prompts.route_mask)) if train else None
  return route, metrics


def run_updates(update: Callable, put: Callable, state, full: UpdateBatch, cfg: RLConfig,
                rng: np.random.Generator) -> tuple[Any, dict[str, float]]:
  """Stage 6: `num_inner_updates` epochs over `num_minibatches` minibatches of whole groups
  (epoch 0 in order, later epochs shuffled); metrics are means over the updates."""
  B = full.adv.shape[0] // cfg.group_size
  n_mb, out = cfg.num_minibatches, []
  for epoch in range(cfg.num_inner_updates):
    order = rng.permutation(B) if epoch else np.arange(B)
    for j in range(n_mb):
      groups = order[j * (B // n_mb):(j + 1) * (B // n_mb)]
      mb = full if n_mb == 1 and epoch == 0 else rl_batch.take_groups(
          full, groups, cfg.group_size, cfg.mrpv.num_routes)
      state, m = update(state, put(mb))
      out.append(m)
  return state, metrics_lib.to_host(jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *out))


def _has_signal(scored: ScoredBatch, G: int) -> np.ndarray:
  return ~np.asarray(advantages.zero_variance_mask(scored.reward_N, G))


class RLLoop:
  """The compiled phase functions and resolved plug-ins of a run; `step(...)` runs one RL step.

  `more_examples`: optional `fn(n) -> list[Example]`, where dynamic sampling
  draws fresh prompts; unset, it re-rolls the step's own prompts with a new key.
  """

  def __init__(self, ctx: RLContext, cfg: RLConfig, eaai_cfg: eaai.EAAIConfig, optimizer,
               shardings: train_step.StepShardings | None = None):
    self.ctx, self.cfg, self.eaai_cfg, self.K = ctx, cfg, eaai_cfg, cfg.mrpv.num_routes
    tok = ctx.tokenizer
    self.scfg = sampling.SamplingConfig(
        max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
        top_p=cfg.top_p, stop_ids=tuple(tok.stop_ids), num_samples=cfg.group_size,
        pad_id=tok.pad_id)
    self.generate = sampling.make_generate_fn(
        ctx.model_cfg, self.scfg, None if shardings is None
        else (shardings.state.params, shardings.batch, shardings.replicated))
    self.batch_sharding = None if shardings is None else shardings.batch
    # Rollouts are [prompt bucket | max_new_tokens]: logits for the completion slots only.
    self.logprob_fn = rl_step.make_logprob_fn(ctx.model_cfg, self.scfg, cfg.max_new_tokens,
                                              cfg.microbatches)
    self.route_fn = jax.jit(lambda p, t, m, lm: rl_step.route_loglik(p, ctx.model_cfg, t, m, lm))
    self.loss_cfg = cfg.loss
    if cfg.loss.aggregation == "seq_mean_token_sum_norm" and cfg.loss.max_len is None:
      self.loss_cfg = dataclasses.replace(cfg.loss, max_len=cfg.max_new_tokens)
    self.advantage_fn = plugins.resolve(cfg.advantage, advantages.ADVANTAGES, "advantage")
    self.loss_fn = plugins.resolve(cfg.policy_loss, losses.LOSSES, "policy loss")
    self.weights = cfg.weights()
    builtin = rewards.default_scorers()  # looked up now: a run may wrap the built-ins
    self.reward_fns = {n: plugins.resolve(n, builtin, "reward") for n in self.weights}
    self.update = rl_step.make_rl_step(
        ctx.model_cfg, optimizer, self.loss_cfg, cfg.mrpv.contrast_coef, cfg.mrpv.contrast_beta,
        shardings, completion_len=cfg.max_new_tokens, microbatches=cfg.microbatches,
        loss_fn=self.loss_fn, scfg=self.scfg)
    self.put = ((lambda b: jax.tree.map(sharding.put, b, rl_batch.shardings(b, shardings.batch)))
                if shardings is not None else (lambda b: b))
    self.more_examples: Callable[[int], list[Example]] | None = None

  def abstract_batch(self, shardings: train_step.StepShardings) -> UpdateBatch:
    """The largest update batch (longest prompt bucket, full completion), as shapes."""
    cfg, ctx, n = self.cfg, self.ctx, self.cfg.num_minibatches
    B, T = cfg.batch_prompts // n, ctx.prompt_buckets[-1] + cfg.max_new_tokens
    dims = {"N": B * cfg.group_size, "T": T, "L": T - 1, "B": B, "K": self.K, "BK": B * self.K,
            "S": ctx.route_buckets[-1]}
    absent = [name for name, on in (("old_logp", self._several), ("route", self._contrast))
              if not on]
    return rl_batch.abstract(UpdateBatch, dims, shardings.batch, absent)

  @property
  def _several(self) -> bool:  # a rollout feeds several updates: store its old log-probs
    return self.cfg.num_inner_updates * self.cfg.num_minibatches > 1

  @property
  def _contrast(self) -> bool:
    return self.cfg.mrpv.contrast_coef > 0

  def _sample(self, params, prompts: PromptBatch, key) -> Completions:
    return sample(self.generate, params, prompts, key, self.ctx.tokenizer, self.batch_sharding,
                  self.scfg.greedy)

  def _device(self, x: np.ndarray) -> jax.Array:
    return jnp.asarray(x) if self.batch_sharding is None else sharding.put(x, self.batch_sharding)

  def refill(self, params, prompts: PromptBatch, comps: Completions, scored: ScoredBatch,
             step: int, clock: int, rng: np.random.Generator):
    """DAPO dynamic sampling: up to `dynamic_sampling_rollouts` more rollouts of B prompts;
    their groups with reward variance replace zero-variance ones (first come first kept);
    groups still missing are zero-variance ones of the first rollout (filtered as usual)."""
    cfg, G, B = self.cfg, self.cfg.group_size, len(prompts.examples)
    parts, have, rounds = [(prompts, comps, scored)], int(_has_signal(scored, G).sum()), 0
    while have < B and rounds < cfg.dynamic_sampling_rollouts:
      rounds += 1
      ex = self.more_examples(B) if self.more_examples else prompts.examples
      key = jax.random.fold_in(jax.random.fold_in(jax.random.key(self.ctx.seed), step), rounds)
      p = make_prompts(ex, cfg, self.eaai_cfg, self.ctx, clock, rng)
      c = self._sample(params, p, key)
      parts.append((p, c, score(p, c, G, self.reward_fns, self.weights)))
      have += int(_has_signal(parts[-1][2], G).sum())
    if rounds:
      picks = [(i, np.flatnonzero(_has_signal(s, G))) for i, (_, _, s) in enumerate(parts)]
      n, chosen = 0, []
      for i, groups in picks:
        chosen.append((i, groups[:B - n]))
        n += len(chosen[-1][1])
      chosen.append((0, np.flatnonzero(~_has_signal(scored, G))[:B - n]))
      take = lambda j: rl_batch.concat([rl_batch.take_groups(parts[i][j], g, G, self.K)
                                        for i, g in chosen if len(g)])
      prompts, comps, scored = take(0), take(1), take(2)
    return prompts, comps, scored, {"dynamic_sampling_rollouts": float(rounds)}

  def step(self, state, ref_params, examples: list[Example], step: int, clock: int):
    cfg, G = self.cfg, self.cfg.group_size
    rng = np.random.default_rng([self.ctx.seed, step])
    t0 = time.perf_counter()
    prompts = make_prompts(examples, cfg, self.eaai_cfg, self.ctx, clock, rng)
    comps = self._sample(state.params, prompts, jax.random.fold_in(jax.random.key(self.ctx.seed),
                                                                   step))
    t_rollout = time.perf_counter()
    scored, extra = score(prompts, comps, G, self.reward_fns, self.weights), {}
    if cfg.dynamic_sampling_rollouts:
      prompts, comps, scored, extra = self.refill(state.params, prompts, comps, scored, step,
                                                  clock, rng)
    t_reward = time.perf_counter()
    full = self._update_batch(state.params, ref_params, comps)
    scored = estimate_advantages(scored, comps, G, cfg, self.advantage_fn, self._kl_penalty(full))
    route, contrast = route_contrast(self.route_fn, state.params, ref_params, self.ctx.tokenizer,
                                     prompts, self.K, self.ctx.route_buckets, self._contrast)
    full = full.replace(adv=jnp.asarray(scored.adv_N), route=route, completion_mask=jnp.asarray(
        comps.completion_mask * scored.keep_N[:, None], jnp.int32))
    rl_batch.check_shapes(full)
    t_ref = time.perf_counter()
    state, m_update = run_updates(self.update, self.put, state, full, cfg, rng)
    times = (t0, t_rollout, t_reward, t_ref, time.perf_counter())
    return state, self._metrics(prompts, comps, scored, times, clock,
                                {**extra, **contrast, **m_update})

  def _update_batch(self, params, ref_params, comps: Completions) -> UpdateBatch:
    """The rollout with its reference, sampler and (several updates) old log-probs."""
    tokens, mask = self._device(comps.tokens), self._device(comps.mask)
    N = tokens.shape[0]
    return UpdateBatch(
        tokens=tokens, mask=mask, completion_mask=jnp.asarray(comps.completion_mask, jnp.int32),
        adv=jnp.zeros((N,), jnp.float32), ref_logp=self.logprob_fn(ref_params, tokens, mask),
        sampler_logp=jnp.asarray(comps.logp[:, 1:]),
        old_logp=self.logprob_fn(params, tokens, mask) if self._several else None)

  def _kl_penalty(self, full: UpdateBatch) -> np.ndarray | None:
    if not (self.loss_cfg.kl_in_reward and self.loss_cfg.kl_coef):
      return None
    return np.asarray(losses.kl_reward_penalty(full.sampler_logp, full.ref_logp,
                                               full.completion_mask[:, 1:], self.loss_cfg))

  def _metrics(self, prompts: PromptBatch, comps: Completions, scored: ScoredBatch, times,
               clock: int, extra: dict) -> dict[str, float]:
    t0, t_rollout, t_reward, t_ref, t_update = times
    acc_N = scored.rewards_NR[:, scored.names.index("answer")]
    routes_N = np.repeat(prompts.show, self.cfg.group_size)
    mean = lambda x, where: float(x[where].mean()) if where.any() else float("nan")
    reward_means = {f"reward/{n}": float(scored.rewards_NR[:, r].mean())
                    for r, n in enumerate(scored.names)}  # of the batch that trains
    reward_means.update(rewards.group_signal(scored.rewards_NR, scored.names,
                                             [self.weights[n] for n in scored.names],
                                             self.cfg.group_size))
    return {
        **scored.metrics, **reward_means,
        "reward": float(scored.reward_N.mean()), "accuracy": float(acc_N.mean()),
        "accuracy_no_routes": mean(acc_N, ~routes_N), "accuracy_routes": mean(acc_N, routes_N),
        "p_routes": float(prompts.show.mean()), "num_routes": prompts.num_routes,
        "prefix_fraction": prompts.prefix_fraction, "eaai_clock": clock,
        "completion_len_mean": float(comps.lengths.mean()),
        "completion_len_max": float(comps.lengths.max()),
        "truncated": float(np.mean(comps.truncated)), "prompts_too_long": prompts.too_long,
        "rollout_tokens_per_s": float(comps.completion_mask[:, 1:].sum())
        / max(t_rollout - t0, 1e-9),
        "update_tokens_per_s": float(comps.mask.sum()) * self.cfg.num_inner_updates
        / max(t_update - t_ref, 1e-9),
        "time_rollout": t_rollout - t0, "time_reward": t_reward - t_rollout,
        "time_reference": t_ref - t_reward, "time_update": t_update - t_ref,
        **extra,
    }
