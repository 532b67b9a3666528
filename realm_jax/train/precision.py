"""fp32 master weights for low-precision params.

A train state whose params are below fp32 (bf16 on accelerators, the default
of `realm_jax.model.spec`) keeps fp32 copies of them in its optimizer state,
`MasterWeights(master, inner)`: the optimizer (clipping, AdamW and its
moments) runs on fp32 gradients over the fp32 masters, and the params, the
copy the forward reads, become the updated masters rounded to their dtype:

  m' = m + u(g, m),   w' = round_bf16(m').

An update below half a bf16 ulp of its weight (|u| < 2^-9 |w|) still
accumulates in m, where w + u in bf16 would round it away step after step.
All-fp32 params (CPU) keep the optimizer's own state and update: nothing
changes there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from realm_jax.train import sharding


class MasterWeights(NamedTuple):
  master: Any  # fp32 params, the tree of the params
  inner: Any   # the optimizer's state over `master`


def needs_master(params: Any) -> bool:
  """Whether any param (an array or a ShapeDtypeStruct) is below fp32."""
  return any(jnp.dtype(x.dtype) != jnp.float32 for x in jax.tree.leaves(params))


def _fp32(tree: Any) -> Any:
  return jax.tree.map(lambda x: x.astype(jnp.float32), tree)


def init_opt_state(optimizer: optax.GradientTransformation, params: Any) -> Any:
  """optimizer.init(params), or with low-precision params MasterWeights(fp32 params,
  optimizer.init of them)."""
  if not needs_master(params):
    return optimizer.init(params)
  master = _fp32(params)
  return MasterWeights(master, optimizer.init(master))


def apply_update(optimizer: optax.GradientTransformation, grads: Any, opt_state: Any,
                 params: Any) -> tuple[Any, Any]:
  """(new params, new optimizer state) after one optimizer step on `grads`."""
  if not isinstance(opt_state, MasterWeights):
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  updates, inner = optimizer.update(_fp32(grads), opt_state.inner, opt_state.master)
  master = optax.apply_updates(opt_state.master, updates)
  params = jax.tree.map(lambda m, p: m.astype(p.dtype), master, params)
  return params, MasterWeights(master, inner)


def opt_state_shardings(optimizer: optax.GradientTransformation, abstract_params: Any,
                        params_shardings: Any) -> Any:
  """Sharding tree of `init_opt_state(optimizer, params)`: masters like their params."""
  if not needs_master(abstract_params):
    return sharding.opt_state_shardings(optimizer, abstract_params, params_shardings)
  abstract_master = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32),
                                 abstract_params)
  return MasterWeights(params_shardings, sharding.opt_state_shardings(
      optimizer, abstract_master, params_shardings))
