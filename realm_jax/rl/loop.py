"""The RL loop: MRPV prompts under the EAAI schedule, GRPO-family updates.

Per step (host side unless noted):
  1. EAAI: `external_signal(clock)` -> (p_routes, K, prefix); each prompt
     carries routes with probability p (all G samples share the context).
  2. MRPV prompts (routes sampled, shuffled, truncated), tokenized, left
     padded to a bucket.
  3. Rollout: the compiled sampler (jit, reused across steps).
  4. Rewards: an [N, R] matrix (answer, verification, format), weighted.
  5. Advantages (group-relative), old and reference log-probs (jit).
  6. Route contrast: teacher-forced route log-likelihoods of policy and
     reference, margins over every (positive, negative) pair.
  7. `num_inner_updates` x `num_minibatches` jitted updates.
  8. Metrics, EAAI clock (optionally gated), periodic checkpoint.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from realm_jax.rl import advantages, corpus, eaai, losses
from realm_jax.data import pipeline as data
from realm_jax.train import metrics as metrics_lib
from realm_jax.rl import mrpv, rewards
from realm_jax.model import sampling
from realm_jax.train import sharding, step as train_step
from realm_jax.rl.config import RLConfig
from realm_jax.data.records import Example
from realm_jax.rl import step as rl_step
from realm_jax.train.generation import completion_texts, encode_prompts


@dataclasses.dataclass
class RLContext:
  model_cfg: Any
  tokenizer: Any
  prompt_buckets: tuple[int, ...]
  route_buckets: tuple[int, ...]
  seed: int
  chat: bool = False


@dataclasses.dataclass
class HostRollout:
  """The host-side numbers of a rollout (all-gathered across processes)."""
  tokens: np.ndarray
  mask: np.ndarray
  completion_mask: np.ndarray
  lengths: np.ndarray
  truncated: np.ndarray

  @classmethod
  def of(cls, rollout: sampling.Rollout) -> "HostRollout":
    return cls(**{f.name: sharding.to_host(getattr(rollout, f.name))
                  for f in dataclasses.fields(cls)})


def _route_batch(tok, examples, shown_texts, K: int, buckets) -> dict[str, np.ndarray]:
  """[B*K, Tr] teacher-forced inputs: question context, then the route (loss mask on the route)."""
  rows, loss_rows = [], []
  for ex, texts in zip(examples, shown_texts):
    ctx = tok.encode(ex.question + "\n", add_bos=True)
    for k in range(K):
      r = tok.encode(texts[k]) if k < len(texts) else []
      rows.append(ctx + r)
      loss_rows.append(len(r))
  cap = buckets[-1]
  rows = [r[:cap] for r in rows]
  length = data.bucket_length(max(len(r) for r in rows), buckets)
  tokens, mask = data.pad_left(rows, length, tok.pad_id)
  loss_mask = np.zeros_like(mask)
  for i, (r, n) in enumerate(zip(rows, loss_rows)):
    n = min(n, len(r))
    if n:
      loss_mask[i, length - n:] = 1
  return {"route_tokens": tokens, "route_mask": mask, "route_loss_mask": loss_mask}


class RLLoop:
  """Holds the compiled phase functions; `step(...)` runs one RL step."""

  def __init__(self, ctx: RLContext, cfg: RLConfig, eaai_cfg: eaai.EAAIConfig, optimizer,
               shardings: train_step.StepShardings | None = None):
    self.ctx, self.cfg, self.eaai_cfg = ctx, cfg, eaai_cfg
    stop_ids = tuple(ctx.tokenizer.stop_ids)
    self.scfg = sampling.SamplingConfig(max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.temperature, stop_ids=stop_ids,
                                        num_samples=cfg.group_size,
                                        pad_id=ctx.tokenizer.pad_id)
    self.generate = sampling.make_generate_fn(
        ctx.model_cfg, self.scfg,
        None if shardings is None else (shardings.state.params, shardings.batch, shardings.replicated))
    self.batch_sharding = None if shardings is None else shardings.batch
    # Rollouts are [prompt bucket | max_new_tokens]: logits for the completion slots only.
    self.logprob_fn = train_step.make_logprob_fn(ctx.model_cfg, cfg.max_new_tokens,
                                                 cfg.microbatches)
    self.route_fn = jax.jit(lambda p, t, m, lm: rl_step.route_loglik(p, ctx.model_cfg, t, m, lm))
    loss_cfg = cfg.loss
    if loss_cfg.aggregation == "seq_mean_token_sum_norm" and loss_cfg.max_len is None:
      loss_cfg = dataclasses.replace(loss_cfg, max_len=cfg.max_new_tokens)
    self.loss_cfg = loss_cfg
    self.update = rl_step.make_rl_step(ctx.model_cfg, optimizer, loss_cfg,
                                          cfg.mrpv.contrast_coef, cfg.mrpv.contrast_beta, shardings,
                                          completion_len=cfg.max_new_tokens,
                                          microbatches=cfg.microbatches)
    self.put = ((lambda b: {k: sharding.put(v, shardings.batch) for k, v in b.items()})
                if shardings is not None else (lambda b: b))
    self.K = cfg.mrpv.num_routes

  def abstract_batch(self, shardings: train_step.StepShardings) -> dict:
    """The largest update batch (longest prompt bucket, full completion), as shapes."""
    cfg, ctx = self.cfg, self.ctx
    B, G, K = cfg.batch_prompts, cfg.group_size, self.K
    N, T = B * G // cfg.num_minibatches, ctx.prompt_buckets[-1] + cfg.max_new_tokens
    s = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings.batch)
    batch = {"tokens": s((N, T), jnp.int32), "mask": s((N, T), jnp.bool_),
             "completion_mask": s((N, T), jnp.int32), "ref_logp": s((N, T - 1), jnp.float32),
             "adv": s((N,), jnp.float32), "sampler_logp": s((N, T - 1), jnp.float32)}
    if cfg.num_inner_updates * cfg.num_minibatches > 1:
      batch["old_logp"] = s((N, T - 1), jnp.float32)
    if cfg.mrpv.contrast_coef > 0:
      b, R = B // cfg.num_minibatches, ctx.route_buckets[-1]
      batch.update(route_tokens=s((b * K, R), jnp.int32), route_mask=s((b * K, R), jnp.int32),
                   route_loss_mask=s((b * K, R), jnp.int32),
                   route_ref_logp=s((b, K), jnp.float32), route_labels=s((b, K), jnp.bool_),
                   route_valid=s((b, K), jnp.bool_))
    return batch

  def routes_for(self, clock: int, rng: np.random.Generator, B: int) -> tuple[np.ndarray, int, float]:
    if self.cfg.routes == "never":
      return np.zeros(B, bool), 0, 1.0
    if self.cfg.routes == "always":
      return np.ones(B, bool), self.K, 1.0
    _, k, frac = eaai.external_signal(clock, self.eaai_cfg)
    return eaai.route_decisions(clock, self.eaai_cfg, B, rng), min(int(k), self.K), float(frac)

  def step(self, state, ref_params, examples: list[Example], step: int, clock: int):
    cfg, ctx, tok = self.cfg, self.ctx, self.ctx.tokenizer
    B, G, K = len(examples), cfg.group_size, self.K
    rng = np.random.default_rng([ctx.seed, step])
    t0 = time.perf_counter()
    show, k_show, frac = self.routes_for(clock, rng, B)
    prompts, labels_BK, mask_BK, shown = [], np.zeros((B, K), bool), np.zeros((B, K), bool), []
    for b, ex in enumerate(examples):
      prompt, labels, texts = corpus.route_prompt(ex, rng, cfg.mrpv, k_show if show[b] else 0, frac,
                                                  negatives=cfg.negatives)
      prompts.append(prompt)
      shown.append(texts)
      labels_BK[b, :len(labels)] = labels
      mask_BK[b, :len(labels)] = True
    show = mask_BK.any(axis=1)
    p_tokens, p_mask, too_long = encode_prompts(tok, prompts, ctx.prompt_buckets, ctx.chat)

    key = jax.random.fold_in(jax.random.key(ctx.seed), step)
    if self.batch_sharding is not None:  # global prompt arrays, split over the batch axes
      p_tokens, p_mask = (sharding.put(x, self.batch_sharding) for x in (p_tokens, p_mask))
    rollout = self.generate(state.params, jnp.asarray(p_tokens), jnp.asarray(p_mask), key)
    host = HostRollout.of(rollout)
    texts = completion_texts(tok, host)
    t_rollout = time.perf_counter()

    golds = [ex.answer for ex in examples for _ in range(G)]
    rep = lambda x: np.repeat(x, G, axis=0)
    batch = {"completions": texts, "golds": golds, "routes_shown": rep(show),
             "verdicts": mrpv.parse_verdicts_batch(texts, K), "route_labels": rep(labels_BK),
             "route_mask": rep(mask_BK)}
    r_NR, names, reward_metrics = rewards.reward_matrix(rewards.default_scorers(), batch)
    weights = [cfg.mrpv.reward_weights[n] for n in names]
    if cfg.routes == "never" or not cfg.mrpv.w_ver:
      weights = [0.0 if n == "verification" else w for n, w in zip(names, weights)]
    reward_N = rewards.combine(r_NR, weights)
    t_reward = time.perf_counter()

    tokens, mask = rollout.tokens, rollout.mask
    ref_logp = self.logprob_fn(ref_params, tokens, mask)
    sampler_logp = rollout.model_logprobs[:, 1:]
    several = cfg.num_inner_updates * cfg.num_minibatches > 1
    old_logp = self.logprob_fn(state.params, tokens, mask) if several else None
    cmask = host.completion_mask.astype(np.int32)
    if self.loss_cfg.kl_in_reward and self.loss_cfg.kl_coef:
      reward_N = reward_N - np.asarray(losses.kl_reward_penalty(
          sampler_logp, ref_logp, jnp.asarray(cmask[:, 1:]), self.loss_cfg))
    adv_N, adv_metrics = advantages.group_advantages(jnp.asarray(reward_N), G, cfg.normalize_std)
    keep = np.ones(B * G, bool)
    if cfg.filter_zero_variance:
      keep &= ~np.asarray(advantages.zero_variance_mask(jnp.asarray(reward_N), G))
    if cfg.mask_truncated:
      keep &= ~host.truncated
    cmask = cmask * keep[:, None]

    route = _route_batch(tok, examples, shown, K, ctx.route_buckets) if show.any() else None
    contrast = {}
    if route is not None:
      rt = {k: jnp.asarray(v) for k, v in route.items()}
      ref_r = self.route_fn(ref_params, rt["route_tokens"], rt["route_mask"], rt["route_loss_mask"])
      pol_r = self.route_fn(state.params, rt["route_tokens"], rt["route_mask"], rt["route_loss_mask"])
      margins, pair_mask = mrpv.route_pair_margins(pol_r.reshape(B, K), ref_r.reshape(B, K),
                                                   labels_BK, mask_BK)
      contrast = {f"contrast_{k}": v for k, v in mrpv.contrast_metrics(margins, pair_mask).items()}
    t_ref = time.perf_counter()

    full = {"tokens": tokens, "mask": mask, "completion_mask": jnp.asarray(cmask),
            "ref_logp": ref_logp, "adv": adv_N, "sampler_logp": sampler_logp}
    if several:
      full["old_logp"] = old_logp
    if cfg.mrpv.contrast_coef > 0:
      if route is None:  # keep shapes static: an all-invalid route batch
        route = _route_batch(tok, examples, [[] for _ in examples], K, ctx.route_buckets)
        ref_r = jnp.zeros((B * K,), jnp.float32)
      full.update({k: jnp.asarray(v) for k, v in route.items()})
      full.update(route_ref_logp=ref_r.reshape(B, K), route_labels=jnp.asarray(labels_BK),
                  route_valid=jnp.asarray(mask_BK))
    n_mb = cfg.num_minibatches
    update_metrics = []
    for epoch in range(cfg.num_inner_updates):
      order = rng.permutation(B) if epoch else np.arange(B)
      for j in range(n_mb):
        groups = order[j * (B // n_mb):(j + 1) * (B // n_mb)]
        rows = (groups[:, None] * G + np.arange(G)).reshape(-1)
        if n_mb == 1 and epoch == 0:  # the whole batch in order: no gather
          mb = {k: v for k, v in full.items() if not k.startswith("route")}
        else:
          mb = {k: (v[rows] if v.shape[0] == B * G else v) for k, v in full.items()
                if not k.startswith("route")}
        if cfg.mrpv.contrast_coef > 0:
          rrows = (groups[:, None] * K + np.arange(K)).reshape(-1)
          for k in ("route_tokens", "route_mask", "route_loss_mask"):
            mb[k] = full[k][rrows]
          for k in ("route_ref_logp", "route_labels", "route_valid"):
            mb[k] = full[k][groups]
        state, m = self.update(state, self.put(mb))
        update_metrics.append(m)
    m_host = metrics_lib.to_host(jax.tree.map(lambda *x: jnp.mean(jnp.stack(x)), *update_metrics))
    t_update = time.perf_counter()

    lengths = host.lengths
    cm = host.completion_mask[:, 1:].astype(bool)
    acc_N = r_NR[:, names.index("answer")]
    routes_N = rep(show)
    gen_tokens = int(cm.sum())
    out = {
        "reward": float(reward_N.mean()), "accuracy": float(acc_N.mean()),
        "accuracy_no_routes": float(acc_N[~routes_N].mean()) if (~routes_N).any() else float("nan"),
        "accuracy_routes": float(acc_N[routes_N].mean()) if routes_N.any() else float("nan"),
        "p_routes": float(show.mean()), "num_routes": k_show, "prefix_fraction": frac,
        "eaai_clock": clock, "completion_len_mean": float(lengths.mean()),
        "completion_len_max": float(lengths.max()), "truncated": float(np.mean(host.truncated)),
        "prompts_too_long": too_long,
        "rollout_tokens_per_s": gen_tokens / max(t_rollout - t0, 1e-9),
        "update_tokens_per_s": float(host.mask.sum()) * cfg.num_inner_updates
        / max(t_update - t_ref, 1e-9),
        "time_rollout": t_rollout - t0, "time_reward": t_reward - t_rollout,
        "time_reference": t_ref - t_reward, "time_update": t_update - t_ref,
        **{k: float(v) for k, v in reward_metrics.items()},
        **{k: float(np.asarray(v)) for k, v in adv_metrics.items()},
        **{k: float(np.asarray(v)) for k, v in contrast.items()},
        **m_host,
    }
    return state, out
