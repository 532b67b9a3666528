"""EAAI schedule: pinned boundaries for every shape, monotonicity, jit, gate,
route decisions, and the schedule plot."""

import math

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from realm_jax.rl import eaai
from realm_jax.cli import plots

TOL = 1e-5

# total_steps 100, fade window [20, 70] (L = 50 steps), tau = 10 steps.
BASE = dict(total_steps=100, fade_start=0.2, fade_length=0.5, tau=0.1,
            start=1.0, end=0.0,
            phases=((0.2, 0.75), (0.45, 0.5), (0.7, 0.0)))

# Hand-computed values at steps 0 (first), 20 (fade start), 30 (u = 0.2),
# 45 (u = 0.5), 70 (fade end), 99 (last step).
#   cosine  u=0.2: (1 + cos(0.2 pi)) / 2 = (1 + 0.809017) / 2 = 0.904508
#   expon.  t=10: (e^-1 - e^-5) / (1 - e^-5) = (0.367879 - 0.006738) / 0.993262
#                = 0.363591;  t=25: (e^-2.5 - e^-5) / (1 - e^-5) = 0.075858
#   inverse t=10: (1/2 - 1/6) / (5/6) = 2/5;  t=25: (2/7 - 1/6) / (5/6) = 1/7
#   staircase: 0.75 from step 20, 0.5 from 45, 0 from 70 (start 1 before).
E5 = math.exp(-5.0)
PINS = {
    "constant": {0: 1.0, 20: 1.0, 30: 1.0, 45: 1.0, 70: 1.0, 99: 1.0},
    "linear": {0: 1.0, 20: 1.0, 30: 0.8, 45: 0.5, 70: 0.0, 99: 0.0},
    "cosine": {0: 1.0, 20: 1.0, 30: (1 + math.cos(0.2 * math.pi)) / 2,
               45: 0.5, 70: 0.0, 99: 0.0},
    "exponential": {0: 1.0, 20: 1.0, 30: (math.exp(-1) - E5) / (1 - E5),
                    45: (math.exp(-2.5) - E5) / (1 - E5), 70: 0.0, 99: 0.0},
    "inverse": {0: 1.0, 20: 1.0, 30: 0.4, 45: 1 / 7, 70: 0.0, 99: 0.0},
    "staircase": {0: 1.0, 19: 1.0, 20: 0.75, 30: 0.75, 44: 0.75, 45: 0.5,
                  69: 0.5, 70: 0.0, 99: 0.0},
}


@pytest.mark.parametrize("shape", eaai.SHAPES)
def test_pinned_values_every_shape(shape):
  cfg = eaai.EAAIConfig(shape=shape, **BASE)
  for step, value in PINS[shape].items():
    np.testing.assert_allclose(eaai.schedule_value(step, cfg), value,
                               atol=TOL, err_msg=f"{shape} step {step}")
    p, n, prefix = eaai.external_signal(step, cfg)
    np.testing.assert_allclose(p, value, atol=TOL)
    assert int(n) == cfg.max_routes and float(prefix) == 1.0


def test_default_is_linear_probability_over_first_60_percent():
  cfg = eaai.EAAIConfig(total_steps=1000)
  expected = {0: 1.0, 150: 0.75, 300: 0.5, 600: 0.0, 800: 0.0, 999: 0.0}
  for step, value in expected.items():
    p, n, prefix = eaai.external_signal(step, cfg)
    np.testing.assert_allclose(p, value, atol=TOL)
    assert int(n) == 3 and float(prefix) == 1.0


@pytest.mark.parametrize("shape", eaai.SHAPES)
def test_monotone_and_jit_equals_python(shape):
  cfg = eaai.EAAIConfig(shape=shape, fade_count=True, fade_prefix=True, **BASE)
  steps = np.arange(cfg.total_steps)
  p, n, prefix = (np.asarray(x) for x in eaai.external_signal(steps, cfg))
  assert np.all(np.diff(p) <= 0) and np.all(np.diff(n) <= 0)
  assert np.all(np.diff(prefix) <= 0)
  assert np.all((p >= 0) & (p <= 1))
  jitted = jax.jit(lambda s: eaai.external_signal(s, cfg))
  for step in (0, 20, 33, 45, 70, 99):
    py = eaai.external_signal(step, cfg)
    jt = jitted(jnp.int32(step))
    np.testing.assert_allclose(jt[0], py[0], atol=TOL)
    assert int(jt[1]) == int(py[1])
    np.testing.assert_allclose(jt[2], py[2], atol=TOL)
    np.testing.assert_allclose(py[0], p[step], atol=TOL)  # vectorised == scalar
  if shape not in ("constant", "staircase"):
    up = eaai.EAAIConfig(shape=shape, **dict(BASE, start=0.2, end=0.8))
    v = np.asarray(eaai.schedule_value(steps, up))
    assert np.all(np.diff(v) >= 0)
    np.testing.assert_allclose(v[[0, 20, 70, 99]], [0.2, 0.2, 0.8, 0.8],
                               atol=TOL)


def test_num_routes_rounding_and_channels():
  # Linear over [0, 600) of 1000 steps, max_routes 3, num = ceil(3 v):
  #   step 0: v 1 -> 3;  150: v 0.75 -> ceil(2.25) = 3;  300: v 0.5 -> 2;
  #   400: v 1/3 (float32 0.33333334, 3v = 1.0000001) -> 1, not 2;
  #   594: v 0.01 -> 1;  600: v 0 -> 0.
  cfg = eaai.EAAIConfig(total_steps=1000, fade_probability=False,
                        fade_count=True, fade_prefix=True)
  for step, routes in {0: 3, 150: 3, 300: 2, 400: 1, 594: 1, 600: 0}.items():
    p, n, prefix = eaai.external_signal(step, cfg)
    assert n.dtype == jnp.int32 and int(n) == routes, step
    assert float(p) == 1.0
  np.testing.assert_allclose(eaai.external_signal(300, cfg)[2], 0.5,
                             atol=TOL)


def test_advance_clock_gate():
  free = eaai.EAAIConfig()
  assert int(eaai.advance_clock(5, 0.0, free)) == 6
  gated = eaai.EAAIConfig(gate_threshold=0.5)
  assert int(eaai.advance_clock(5, 0.4, gated)) == 5
  assert int(eaai.advance_clock(5, 0.5, gated)) == 6
  assert int(eaai.advance_clock(5, 0.9, gated)) == 6
  assert int(eaai.advance_clock(5, None, gated)) == 6  # nothing to gate on
  assert int(eaai.advance_clock(5, float("nan"), gated)) == 6
  jitted = jax.jit(lambda c, a: eaai.advance_clock(c, a, gated))
  assert int(jitted(jnp.int32(5), jnp.float32(0.4))) == 5
  assert int(jitted(jnp.int32(5), jnp.float32(0.6))) == 6


def test_route_decisions():
  cfg = eaai.EAAIConfig(total_steps=1000)
  assert eaai.route_decisions(0, cfg, 64, np.random.default_rng(0)).all()
  assert not eaai.route_decisions(600, cfg, 64,
                                  np.random.default_rng(0)).any()
  d = eaai.route_decisions(300, cfg, 4000, np.random.default_rng(0))
  assert d.dtype == bool and d.shape == (4000,)
  assert abs(d.mean() - 0.5) < 0.04  # binomial sd ~0.008
  np.testing.assert_array_equal(
      d, eaai.route_decisions(300, cfg, 4000, np.random.default_rng(0)))
  # Count faded to 0 while the probability is not faded: no routes at all.
  count_only = eaai.EAAIConfig(total_steps=1000, fade_probability=False,
                               fade_count=True)
  assert not eaai.route_decisions(999, count_only, 16,
                                  np.random.default_rng(0)).any()


@pytest.mark.parametrize("kwargs, match", [
    (dict(shape="step"), "shape"),
    (dict(start=1.5), "start"),
    (dict(end=-0.1), "end"),
    (dict(total_steps=0), "total_steps"),
    (dict(fade_start=0.5, fade_length=0.6), "fade_length"),
    (dict(fade_length=0.0), "fade_length"),
    (dict(tau=0.0), "tau"),
    (dict(shape="staircase", phases=()), "phases"),
    (dict(shape="staircase", phases=((0.5, 0.5), (0.2, 0.0))), "increase"),
    (dict(shape="staircase", phases=((0.5, 2.0),)), "phases"),
    (dict(max_routes=0), "max_routes"),
    (dict(gate_threshold=1.2), "gate_threshold"),
])
def test_config_validation(kwargs, match):
  with pytest.raises(ValueError, match=match):
    eaai.EAAIConfig(**kwargs)


def test_plot_schedule_writes_png(tmp_path):
  cfg = eaai.EAAIConfig(total_steps=200, fade_count=True)
  path = tmp_path / "schedule.png"
  acc = (np.arange(0, 200, 20), np.linspace(0.1, 0.8, 10))
  assert plots.plot_schedule(cfg, path, accuracy_curve=acc) == str(path)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(data) > 10_000
  image = matplotlib.image.imread(path)  # decodes: a valid, full image
  assert image.shape[:2] == (500, 700)
  assert image.std() > 0.01  # not blank
