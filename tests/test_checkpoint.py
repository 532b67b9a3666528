"""Checkpoint round trips across meshes, retention, corruption fallback (when to save: test_loop)."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from realm_jax.train import checkpoint as ck
from realm_jax.train import sharding as sh


def _state(scale=1.0):
  w = np.arange(64 * 32, dtype=np.float32).reshape(64, 32) * scale
  return {"params": {"w": w, "b": np.full((32,), scale, np.float32)},
          "step": np.int32(7)}


def _sharded(state, mesh):
  specs = {"params": {"w": P(("data", "fsdp"), "tensor"), "b": P("tensor")}, "step": P()}
  return jax.device_put(state, jax.tree.map(lambda s: NamedSharding(mesh, s), specs))


def _abstract(state, shardings):
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype,
                                                        sharding=s), state, shardings)


def test_roundtrip_across_meshes_with_extra(tmp_path):
  src = sh.make_mesh(sh.MeshConfig(8, 1, 1))
  state = _sharded(_state(), src)
  extra = {"data_iter": '{"pos": 12}', "eaai_clock": 40, "rng": [1, 2], "ref": "sft"}
  with ck.Checkpointer(tmp_path / "ck") as c:
    assert c.save(5, state, extra, metrics={"acc": 0.5})
    c.wait()
    assert c.latest_step() == 5

  c = ck.Checkpointer(tmp_path / "ck")
  dst = sh.make_mesh(sh.MeshConfig(2, 2, 2))
  target_sh = {"params": {"w": NamedSharding(dst, P(("data", "fsdp"), "tensor")),
                          "b": NamedSharding(dst, P("tensor"))},
               "step": NamedSharding(dst, P())}
  restored, got_extra = c.restore(abstract_state=_abstract(_state(), target_sh))
  assert got_extra == extra
  np.testing.assert_array_equal(restored["params"]["w"], _state()["params"]["w"])
  np.testing.assert_array_equal(restored["params"]["b"], _state()["params"]["b"])
  assert int(restored["step"]) == 7
  assert restored["params"]["w"].sharding.mesh.shape == dst.shape
  assert restored["params"]["w"].sharding.spec == P(("data", "fsdp"), "tensor")
  # w [64, 32] over data*fsdp=4 rows and tensor=2 columns.
  assert restored["params"]["w"].addressable_shards[0].data.shape == (16, 16)

  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  single, _ = c.restore(5, abstract_state=_abstract(_state(), jax.tree.map(lambda _: one, _state())))
  assert single["params"]["w"].sharding == one
  np.testing.assert_array_equal(single["params"]["w"], _state()["params"]["w"])
  c.close()


def test_partial_restore_of_params_only(tmp_path):
  state = {"params": {"w": np.ones((4, 4), np.float32)}, "opt": {"mu": np.zeros((4, 4), np.float32)}}
  with ck.Checkpointer(tmp_path, async_save=False) as c:
    c.save(1, state)
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = {"params": {"w": jax.ShapeDtypeStruct((4, 4), jnp.float32, sharding=one)}}
    got, extra = c.restore(abstract_state=target, partial=True)
  assert set(got) == {"params"} and extra == {}
  np.testing.assert_array_equal(got["params"]["w"], np.ones((4, 4)))


def test_restore_onto_plain_eval_shape_gives_device_arrays(tmp_path):
  state = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.int32(3)}
  with ck.Checkpointer(tmp_path) as c:
    c.save(3, state)
    got, _ = c.restore(abstract_state=jax.eval_shape(lambda: state))
  assert isinstance(got["w"], jax.Array) and got["w"].devices() == {jax.local_devices()[0]}
  np.testing.assert_array_equal(got["w"], np.arange(6.0).reshape(2, 3))
  assert int(got["step"]) == 3


def test_keep_last_n(tmp_path):
  with ck.Checkpointer(tmp_path, keep_last=2) as c:
    for step in range(1, 6):
      c.save(step, _state(step))
    c.wait()
    assert c.all_steps() == [4, 5]
    assert c.save(5, _state()) is False  # already there


@pytest.mark.parametrize("mode,best", [("max", 1), ("min", 2)])
def test_keep_best_and_latest(tmp_path, mode, best):
  accs = {1: 0.9, 2: 0.1, 3: 0.5, 4: 0.2}
  with ck.Checkpointer(tmp_path, keep_last=1, best_metric="acc", best_mode=mode) as c:
    for step, acc in accs.items():
      c.save(step, _state(step), metrics={"acc": acc, "loss": 1.0})
    c.wait()
    assert c.all_steps() == sorted({best, 4})
    assert c.best_step() == best
    with pytest.raises(KeyError, match="keeps the best by 'acc'"):
      c.save(5, _state(), metrics={"loss": 1.0})


def _largest_data_file(step_dir):
  files = [os.path.join(r, f) for r, _, fs in os.walk(step_dir / "state") for f in fs
           if os.path.basename(r) == "d"]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "extra_json"])
def test_corrupted_latest_falls_back_to_previous(tmp_path, damage):
  with ck.Checkpointer(tmp_path) as c:
    c.save(1, _state(1.0), {"which": 1})
    c.save(2, _state(2.0), {"which": 2})
  if damage == "truncate":
    f = _largest_data_file(tmp_path / "2")
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  else:
    (tmp_path / "2" / "extra" / "metadata").write_text('{"which": ')
  c = ck.Checkpointer(tmp_path)
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = _abstract(_state(), jax.tree.map(lambda _: one, _state()))
  with pytest.warns(UserWarning, match="checkpoint step 2 .* is unreadable"):
    state, extra = c.restore(abstract_state=target)
  assert extra == {"which": 1}
  np.testing.assert_array_equal(state["params"]["w"], _state(1.0)["params"]["w"])
  with pytest.raises(Exception):
    c.restore(2, abstract_state=target)  # an explicit step does not fall back
  c.close()


def test_save_rejects_non_json_extra(tmp_path):
  with ck.Checkpointer(tmp_path) as c:
    with pytest.raises(TypeError, match=r"extra\['rng'\] is not JSON-serialisable"):
      c.save(1, _state(), {"rng": np.arange(2)})
