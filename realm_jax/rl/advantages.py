"""Group-relative advantages (GRPO, Dr.GRPO, RLOO).

Conventions
- Rewards are laid out prompt-major: `rewards_N` with N = B * G holds the G
  samples of prompt 0, then the G samples of prompt 1, ... so
  `rewards_N.reshape(B, G)` groups them.
- Reductions run in float32. `group_size` is static (a Python int).
- The advantage of a completion is one scalar per sequence (`adv_N`); the loss
  broadcasts it over the completion's tokens.
- An advantage estimator is `fn(rewards_N, group_size) -> float32[N]`; the
  built-ins are `ADVANTAGES` (the names `rl.advantage` takes); `group_metrics`
  logs the same statistics whichever estimator runs.
"""

from __future__ import annotations

import jax.numpy as jnp


def _grouped(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """[B * G] -> [B, G] in float32, with shape checks on the host."""
  if not isinstance(group_size, int) or group_size < 2:
    raise ValueError(
        f"group_size must be an int >= 2 (group-relative advantages compare "
        f"samples of one prompt), got {group_size!r}")
  rewards_N = jnp.asarray(rewards_N, jnp.float32)
  if rewards_N.ndim != 1:
    raise ValueError(
        f"rewards must be 1-D [B * G] (prompt-major), got shape "
        f"{rewards_N.shape}")
  if rewards_N.shape[0] % group_size:
    raise ValueError(
        f"number of rewards {rewards_N.shape[0]} is not a multiple of "
        f"group_size {group_size}; lay rewards out as [B * G]")
  return rewards_N.reshape(-1, group_size)


def zero_variance_mask(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """bool[B]: True for groups whose G rewards are all equal.

  Such a group has every advantage exactly 0 and gives no policy-gradient
  signal; the training step may drop it from the loss mask (filter) or only
  count it. Repeat over G with `jnp.repeat(mask_B, G)` for a per-sample mask.
  """
  r_BG = _grouped(rewards_N, group_size)
  return jnp.all(r_BG == r_BG[:, :1], axis=1)


STD_SCOPES = ("group", "batch")


def group_advantages(
    rewards_N: jnp.ndarray,
    group_size: int,
    normalize_std: bool = True,
    eps: float = 1e-6,
    std_scope: str = "group",
) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
  """Group-relative advantages.

      mean_b = (1/G) sum_g r_bg
      std_b  = sqrt( (1/(G-1)) sum_g (r_bg - mean_b)^2 )     (unbiased, ddof=1)
      A_bg   = (r_bg - mean_b) / (s_b + eps)   if normalize_std   (GRPO)
      A_bg   =  r_bg - mean_b                  otherwise          (Dr.GRPO)
  with the normaliser s_b by `std_scope`:
      "group": s_b = std_b (classic GRPO: every group with a signal gets unit-scale advantages,
               a group whose rewards differ only by a small auxiliary bonus as much as a
               right/wrong split);
      "batch": s_b = sqrt(mean of std_b^2 over the batch's groups with std_b > 0), one pooled
               within-group std for the batch, so advantages keep the groups' relative reward
               scale (a 0.1 format-bonus split gets 1/10 of a 1.0 right/wrong split); with a
               single group that has a signal it equals "group".

  A zero-variance group gets A = 0 for every sample in all modes.

  Args:
    rewards_N: float[B * G] prompt-major rewards.
    group_size: G, samples per prompt (static, >= 2).
    normalize_std: divide by a std (GRPO) or not (Dr.GRPO).
    eps: added to the std before dividing.
    std_scope: "group" or "batch" (static), see above.

  Returns:
    (adv_N float32[B * G], metrics) with metrics `reward_mean`,
    `reward_std` (over all samples), `group_std_mean` (mean within-group std),
    `zero_variance_share` (share of groups with all rewards equal) and
    `adv_abs_mean`.
  """
  r_BG = _grouped(rewards_N, group_size)
  mean_B1 = jnp.mean(r_BG, axis=1, keepdims=True)
  centered_BG = r_BG - mean_B1
  std_B1 = jnp.sqrt(
      jnp.sum(jnp.square(centered_BG), axis=1, keepdims=True)
      / (group_size - 1))
  zero_B = jnp.all(r_BG == r_BG[:, :1], axis=1)
  if std_scope not in STD_SCOPES:
    raise ValueError(f"std_scope={std_scope!r}; choose one of {', '.join(STD_SCOPES)}")
  if normalize_std and std_scope == "batch":
    signal_B = (~zero_B).astype(jnp.float32)
    pooled_var = (jnp.sum(jnp.square(std_B1[:, 0]) * signal_B)
                  / jnp.maximum(jnp.sum(signal_B), 1.0))
    adv_BG = centered_BG / (jnp.sqrt(pooled_var) + eps)
  elif normalize_std:
    adv_BG = centered_BG / (std_B1 + eps)
  else:
    adv_BG = centered_BG
  # The float mean of G equal rewards need not equal them exactly; pin the
  # advantage of a zero-variance group to exactly 0.
  adv_BG = jnp.where(zero_B[:, None], 0.0, adv_BG)
  adv_N = adv_BG.reshape(-1)
  metrics = {
      "reward_mean": jnp.mean(r_BG),
      "reward_std": jnp.std(r_BG),
      "group_std_mean": jnp.mean(std_B1),
      "zero_variance_share": jnp.mean(zero_B.astype(jnp.float32)),
      "adv_abs_mean": jnp.mean(jnp.abs(adv_N)),
  }
  return adv_N, metrics


def grpo(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """GRPO with the batch's pooled std: A_bg = (r_bg - mean_b) / (s + 1e-6), s the pooled
  within-group std of the groups with a signal (`group_advantages`, std_scope="batch"), so a
  group split only by a small auxiliary reward gets proportionally small advantages."""
  return group_advantages(rewards_N, group_size, normalize_std=True, std_scope="batch")[0]


def grpo_group(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """Classic GRPO: A_bg = (r_bg - mean_b) / (std_b + 1e-6), each group by its own std."""
  return group_advantages(rewards_N, group_size, normalize_std=True, std_scope="group")[0]


def drgrpo(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """Dr.GRPO: A_bg = r_bg - mean_b (no division by the std)."""
  return group_advantages(rewards_N, group_size, normalize_std=False)[0]


def rloo(rewards_N: jnp.ndarray, group_size: int) -> jnp.ndarray:
  """RLOO: each sample's baseline is the mean of the *other* G - 1 samples.

      A_bg = r_bg - (1/(G-1)) sum_{g' != g} r_bg' = G/(G-1) (r_bg - mean_b)
  """
  r_BG = _grouped(rewards_N, group_size)
  others_BG = (jnp.sum(r_BG, axis=1, keepdims=True) - r_BG) / (group_size - 1)
  return (r_BG - others_BG).reshape(-1)


# The built-in estimators, by the name `rl.advantage` gives.
ADVANTAGES = {"grpo": grpo, "grpo_group": grpo_group, "drgrpo": drgrpo, "rloo": rloo}


def group_metrics(rewards_N: jnp.ndarray, adv_N: jnp.ndarray, group_size: int
                  ) -> dict[str, jnp.ndarray]:
  """The statistics of `group_advantages` for any estimator's `adv_N`."""
  _, metrics = group_advantages(rewards_N, group_size)
  return dict(metrics, adv_abs_mean=jnp.mean(jnp.abs(jnp.asarray(adv_N, jnp.float32))))
