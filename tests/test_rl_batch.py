"""Typed batches: row slicing, concatenation, shapes, the abstract batch (all from the
field declarations)."""

import types

import jax
import numpy as np
import pytest

from realm_jax import model
from realm_jax.rl import batch as rl_batch
from realm_jax.rl.batch import RouteBatch, UpdateBatch
from tests import test_rl_loop as harness


def _batch(B=3, G=2, K=2, T=4, S=3):
  N = B * G
  ar = lambda *shape: np.arange(np.prod(shape)).reshape(shape)
  return UpdateBatch(tokens=ar(N, T), mask=ar(N, T) % 2 == 0, completion_mask=ar(N, T),
                     adv=ar(N).astype(np.float32), ref_logp=ar(N, T - 1).astype(np.float32),
                     route=RouteBatch(tokens=ar(B * K, S), mask=ar(B * K, S),
                                      loss_mask=ar(B * K, S), ref_logp=ar(B, K),
                                      labels=ar(B, K) > 2, valid=ar(B, K) > 0))


def test_take_groups_takes_each_field_by_its_row_axis():
  b = rl_batch.take_groups(_batch(), np.array([2, 0]), G=2, K=2)
  np.testing.assert_array_equal(b.adv, [4, 5, 0, 1])              # N rows: 2g, 2g+1
  np.testing.assert_array_equal(b.tokens[:, 0], [16, 20, 0, 4])
  np.testing.assert_array_equal(b.route.tokens[:, 0], [12, 15, 0, 3])  # BK rows: 2g, 2g+1
  np.testing.assert_array_equal(b.route.ref_logp, [[4, 5], [0, 1]])    # B rows: g
  assert b.sampler_logp is None and b.old_logp is None


def test_check_shapes_reads_the_axes_and_reports_disagreements():
  dims = rl_batch.check_shapes(_batch())
  assert dims == {"N": 6, "T": 4, "L": 3, "BK": 6, "S": 3, "B": 3, "K": 2}
  bad = _batch().replace(ref_logp=np.zeros((6, 4)))
  with pytest.raises(ValueError, match="axis T has 4 entries"):
    rl_batch.check_shapes(bad.replace(ref_logp=np.zeros((6, 5))).replace(tokens=np.zeros((6, 5))))
  with pytest.raises(ValueError, match="expected axes"):
    rl_batch.check_shapes(_batch().replace(adv=np.zeros((6, 1))))


def test_concat_left_pads_token_axes_and_joins_row_lists():
  a = rl_batch.Completions(tokens=np.ones((2, 3), np.int32), mask=np.ones((2, 3), bool),
                           completion_mask=np.ones((2, 3), bool), logp=np.ones((2, 3)),
                           lengths=np.ones(2), truncated=np.zeros(2, bool), texts=["a", "b"])
  b = a.replace(tokens=np.full((2, 5), 2, np.int32), mask=np.ones((2, 5), bool),
                completion_mask=np.ones((2, 5), bool), logp=np.ones((2, 5)), texts=["c", "d"])
  c = rl_batch.concat([a, b])
  assert c.tokens.shape == (4, 5) and c.texts == ["a", "b", "c", "d"]
  np.testing.assert_array_equal(c.tokens[0], [0, 0, 1, 1, 1])
  np.testing.assert_array_equal(c.mask[1], [False, False, True, True, True])


@pytest.mark.parametrize("kw", [dict(), dict(num_minibatches=2, num_inner_updates=2)])
def test_abstract_batch_is_the_largest_update_batch_and_lowers(kw):
  import dataclasses
  cfg = harness.rl_cfg(**kw, routes="always",
                       mrpv=dataclasses.replace(harness.MRPV, contrast_coef=0.5))
  loop, opt = harness.make_loop(cfg)
  jitted = loop.update
  seen = harness.spy_updates(loop)
  params = model.init_params(harness.CFG, jax.random.key(0))
  loop.step(harness.fresh_state(opt), params, harness.examples(), 0, 0)
  abstract = loop.abstract_batch(types.SimpleNamespace(batch=None))
  real = seen[0][0]
  assert jax.tree.structure(abstract) == jax.tree.structure(real)
  dims = rl_batch.check_shapes(abstract)
  got = rl_batch.check_shapes(real)
  assert dims["N"] == got["N"] and dims["B"] == got["B"] and dims["K"] == got["K"]
  assert dims["T"] == 128 + harness.M >= got["T"] and dims["S"] == 64 >= got["S"]  # buckets
  for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(real)):
    assert a.dtype == r.dtype
  state = jax.eval_shape(lambda: harness.fresh_state(opt))
  jitted.lower(state, abstract)  # the memory report compiles exactly this


def test_every_declared_array_is_split_on_its_row_axis():
  b = _batch().replace(old_logp=None)
  sh = rl_batch.shardings(b, "rows")
  assert sh.old_logp is None and sh.tokens == "rows" and sh.route.labels == "rows"
  assert len(jax.tree.leaves(sh)) == len(jax.tree.leaves(b))
