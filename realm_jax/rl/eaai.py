"""EAAI, enabling autonomy via asymptotic induction: the route-fading schedule.

The schedule is a pure function of an integer clock (the RL step, or a gated
clock, see `advance_clock`). `schedule_value(step, cfg)` gives one signal
strength v in [0, 1] that moves from `start` to `end`; `external_signal`
applies it to the channels that fade:
  p_routes        = v   if fade_probability else 1   (prompt carries routes)
  num_routes      = ceil(max_routes * v) if fade_count else max_routes
  prefix_fraction = v   if fade_prefix else 1        (share of route steps)

Conventions
- `fade_start`, `fade_length`, `tau` and staircase phase positions are
  FRACTIONS of `total_steps` (so a config survives a change of run length).
- Steps count from 0; the last step is total_steps - 1.
- All math uses jnp: `step` may be a Python int, a traced jnp int under jit,
  or an array of steps (the result broadcasts).
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp
import numpy as np

SHAPES = ("constant", "linear", "cosine", "exponential", "inverse",
          "staircase")


class FromRun(int):
  """An `EAAIConfig` default the experiment fills in: `ExperimentConfig.eaai_config()`
  replaces a `FromRun` total_steps by rl.steps and max_routes by rl.mrpv.num_routes, and
  keeps a value set explicitly (a plain int). Used alone, it is the int it holds."""

  def __repr__(self) -> str:
    return f"FromRun({int(self)})"


@dataclasses.dataclass(frozen=True)
class EAAIConfig:
  """Route-fading schedule.

  shape: how v goes from `start` to `end` over the fade window
    [fade_start, fade_start + fade_length] (fractions of total_steps); v =
    start before the window and end after it. With u = t / L the progress in
    the window (t elapsed steps, L window length in steps):
      constant     v = start (never fades)
      linear       v = start + (end - start) u
      cosine       v = end + (start - end) (1 + cos(pi u)) / 2
      exponential  v = end + (start - end) (g(t) - g(L)) / (1 - g(L)),
                   g(t) = exp(-t / tau)
      inverse      same with g(t) = 1 / (1 + t / tau)
      staircase    v = value of the last phase (fraction, value) whose
                   fraction <= step / total_steps, `start` before the first;
                   the fade window is not used.
    exponential and inverse decay fast first, then slowly (asymptotic); the
    rescaling by g(L) is ours: it makes them continuous and end exactly at
    `end` when the window closes (tau -> inf tends to linear).
  start, end: signal strength at the two ends, in [0, 1].
  total_steps: number of RL steps of the run (default: rl.steps, see `FromRun`).
  tau: time constant, fraction of total_steps.
  phases: staircase steps ((fraction, value), ...), fractions increasing.
  fade_probability / fade_count / fade_prefix: which channels fade.
  max_routes: routes shown when the count is not faded (default: rl.mrpv.num_routes, see
    `FromRun`; never more than num_routes are shown).
  gate_threshold: None, or the autonomous accuracy at or above which the
    clock advances (see `advance_clock`).
  """
  shape: str = "linear"
  start: float = 1.0
  end: float = 0.0
  fade_start: float = 0.0
  fade_length: float = 0.6
  total_steps: int = FromRun(1000)
  tau: float = 0.15
  phases: tuple[tuple[float, float], ...] = (
      (0.15, 0.75), (0.3, 0.5), (0.45, 0.25), (0.6, 0.0))
  fade_probability: bool = True
  fade_count: bool = False
  fade_prefix: bool = False
  max_routes: int = FromRun(3)
  gate_threshold: float | None = None

  def __post_init__(self):
    if self.shape not in SHAPES:
      raise ValueError(f"EAAIConfig.shape={self.shape!r}; choose one of "
                       f"{SHAPES}")
    for name in ("start", "end"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(
            f"EAAIConfig.{name} must be in [0, 1] (a probability / share), "
            f"got {value}")
    if not isinstance(self.total_steps, int) or self.total_steps < 1:
      raise ValueError(
          f"EAAIConfig.total_steps must be a positive int, got "
          f"{self.total_steps!r}")
    if not 0.0 <= self.fade_start <= 1.0:
      raise ValueError(
          f"EAAIConfig.fade_start is a fraction of total_steps and must be in "
          f"[0, 1], got {self.fade_start}")
    if not 0.0 < self.fade_length <= 1.0 - self.fade_start + 1e-9:
      raise ValueError(
          f"EAAIConfig.fade_length is a fraction of total_steps and must be "
          f"in (0, 1 - fade_start] so the fade ends within the run, got "
          f"{self.fade_length} with fade_start={self.fade_start}")
    if not self.tau > 0.0:
      raise ValueError(
          f"EAAIConfig.tau (fraction of total_steps) must be > 0, got "
          f"{self.tau}")
    if self.shape == "staircase":
      if not self.phases:
        raise ValueError("EAAIConfig.phases must be non-empty for "
                         "shape='staircase'")
      fractions = [f for f, _ in self.phases]
      if any(b <= a for a, b in zip(fractions, fractions[1:])):
        raise ValueError(
            f"EAAIConfig.phases fractions must increase strictly, got "
            f"{fractions}")
      for f, v in self.phases:
        if not (0.0 <= f <= 1.0 and 0.0 <= v <= 1.0):
          raise ValueError(
              f"EAAIConfig.phases entries are (fraction in [0, 1], value in "
              f"[0, 1]), got {(f, v)}")
    if not isinstance(self.max_routes, int) or self.max_routes < 1:
      raise ValueError(
          f"EAAIConfig.max_routes must be an int >= 1, got "
          f"{self.max_routes!r}")
    if self.gate_threshold is not None and not (
        0.0 <= self.gate_threshold <= 1.0):
      raise ValueError(
          f"EAAIConfig.gate_threshold must be None or an accuracy in [0, 1], "
          f"got {self.gate_threshold}")


def schedule_value(step, cfg: EAAIConfig) -> jnp.ndarray:
  """Signal strength v(step) in [0, 1], float32 (see `EAAIConfig.shape`)."""
  step = jnp.asarray(step, jnp.float32)
  start, end = jnp.float32(cfg.start), jnp.float32(cfg.end)
  if cfg.shape == "constant":
    return jnp.broadcast_to(start, step.shape)
  if cfg.shape == "staircase":
    v = jnp.broadcast_to(start, step.shape)
    for fraction, value in cfg.phases:
      # First step whose fraction of the run is >= the phase's, exactly.
      first = math.ceil(fraction * cfg.total_steps - 1e-9)
      v = jnp.where(step >= first, jnp.float32(value), v)
    return v
  s0 = cfg.fade_start * cfg.total_steps
  length = cfg.fade_length * cfg.total_steps
  t = jnp.clip(step - s0, 0.0, length)
  u = t / length
  if cfg.shape == "linear":
    return start + (end - start) * u
  if cfg.shape == "cosine":
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * u))
  tau = cfg.tau * cfg.total_steps
  if cfg.shape == "exponential":
    g, g_end = jnp.exp(-t / tau), math.exp(-length / tau)
  else:  # inverse
    g, g_end = 1.0 / (1.0 + t / tau), 1.0 / (1.0 + length / tau)
  return end + (start - end) * (g - g_end) / (1.0 - g_end)


def external_signal(step, cfg: EAAIConfig
                    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """(p_routes float32, num_routes int32, prefix_fraction float32) at `step`.

  num_routes = ceil(max_routes * v) when the count fades (so any positive
  signal shows at least one route and 0 routes only at v = 0; a 1e-6 slack
  keeps float error from adding a route), else max_routes.
  """
  v = schedule_value(step, cfg)
  one = jnp.ones_like(v)
  p_routes = v if cfg.fade_probability else one
  prefix = v if cfg.fade_prefix else one
  if cfg.fade_count:
    num = jnp.ceil(cfg.max_routes * v - 1e-6)
    num_routes = jnp.clip(num, 0, cfg.max_routes).astype(jnp.int32)
  else:
    num_routes = jnp.full(v.shape, cfg.max_routes, jnp.int32)
  return p_routes, num_routes, prefix


def advance_clock(clock, autonomous_accuracy, cfg: EAAIConfig) -> jnp.ndarray:
  """Next value of the schedule's clock (int32).

      clock + 1   if gate_threshold is None
                  or autonomous_accuracy >= gate_threshold
                  or autonomous_accuracy is None / NaN
      clock       otherwise
  `autonomous_accuracy` is the accuracy of the running batch's no-route
  prompts. When the batch has none (None or NaN: e.g. p_routes = 1 at the
  start) there is nothing to gate on and the clock advances, else a schedule
  starting at p_routes = 1 could never move.
  """
  clock = jnp.asarray(clock, jnp.int32)
  if cfg.gate_threshold is None:
    return clock + 1
  if autonomous_accuracy is None:
    autonomous_accuracy = jnp.nan
  acc = jnp.asarray(autonomous_accuracy, jnp.float32)
  ok = jnp.isnan(acc) | (acc >= cfg.gate_threshold)
  return clock + ok.astype(jnp.int32)


def route_decisions(step, cfg: EAAIConfig, num_prompts: int,
                    rng: np.random.Generator) -> np.ndarray:
  """bool[B]: which prompts carry routes at `step` (host side).

  Each prompt independently with probability p_routes, and none when
  num_routes = 0. The decision is per prompt: all G samples of a prompt
  share it (repeat with `np.repeat(decisions_B, G)`), so their group-relative
  advantages compare samples of one context.
  """
  p_routes, num_routes, _ = external_signal(step, cfg)
  if int(num_routes) == 0:
    return np.zeros((num_prompts,), bool)
  return rng.random(num_prompts) < float(p_routes)
