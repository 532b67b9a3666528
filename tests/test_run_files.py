"""A run that starts from a LoRA run (`init_from`): its base is the other run's adapters folded
into that run's own base, W + (alpha / r) A B, recursively through a chain of LoRA runs, and
evaluation pairs against it. The folds here are numpy's, on the adapters as saved."""

import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from realm_jax import errors
from realm_jax.cli import evaluate, export, train
from realm_jax.model import lora, pretrained
from tests.test_train import MICRO

LORA = ["model.lora_rank=4", "model.lora_alpha=8"]
SCALE = 8 / 4


def _saved(path):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path))


def _fold(base: dict, adapters: dict) -> dict:
  """`base` with every kernel that `adapters` adapts replaced by W + SCALE * A @ B (numpy)."""
  out = {}
  for k, v in base.items():
    if isinstance(v, dict):
      out[k] = _fold(v, adapters.get(k, {}))
    elif k == "kernel" and "lora_a" in adapters:
      a, b = np.asarray(adapters["lora_a"]), np.asarray(adapters["lora_b"])
      out[k] = np.asarray(v) + SCALE * np.matmul(a, b)
    else:
      out[k] = np.asarray(v)
  return out


def _assert_trees_close(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [jax.tree_util.keystr(p) for p, _ in la] == [jax.tree_util.keystr(p) for p, _ in lb]
  for (p, x), (_, y) in zip(la, lb):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6,
                               err_msg=jax.tree_util.keystr(p))


def _ctx(wd):
  return train.prepare(train.load_config(wd), wd, create=False)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
  """A: LoRA distillation from the random init; B: more LoRA SFT from A; C: LoRA GRPO from B."""
  root = tmp_path_factory.mktemp("lora_chain")
  a, b, c = (str(root / n) for n in "abc")
  sft = ["sft.steps=2", "sft.batch_size=4"]
  train.run("sft", a, MICRO + LORA + sft)
  train.run("sft", b, MICRO + LORA + sft + ["base.steps=0", f"init_from={a}"])
  train.run("grpo", c, MICRO + LORA + ["base.steps=0", "rl.steps=1", f"init_from={b}"])
  return a, b, c


def test_a_run_from_a_lora_run_starts_from_its_folded_adapters(chain):
  a, b, c = chain
  ctx_a, ctx_b, ctx_c = _ctx(a), _ctx(b), _ctx(c)
  base_a = train.base_params(ctx_a)[0]  # A's random init, without adapters
  assert not lora.has_adapters(base_a)
  adapters = [_saved(train.params_path(w, "sft")) for w in (a, b)]
  for ad in adapters:  # trained: B of every adapter pair is no longer 0
    assert np.any(np.asarray(jax.tree.leaves(ad)[1]) != 0)
  want_b = _fold(jax.tree.map(np.asarray, base_a), adapters[0])
  got_b, source = train.base_params(ctx_b)
  assert source.startswith(a) and not lora.has_adapters(got_b)
  _assert_trees_close(got_b, want_b)
  # C, two LoRA runs down the chain: A's and B's adapters folded in turn; C's RL reference
  # is that base, and its eval pairs the final params against it
  want_c = _fold(want_b, adapters[1])
  _assert_trees_close(train.base_params(ctx_c)[0], want_c)
  assert json.load(open(os.path.join(c, "run.json")))["config"]["init_from"] == b
  stages = train.stage_params(ctx_c, c)
  assert list(stages) == ["start (init_from)", "final (rl)"]
  _assert_trees_close(stages["start (init_from)"], want_c)


def test_eval_of_a_run_from_a_lora_run(chain):
  results = evaluate.run(chain[2], ["eval.num_questions=2", "eval.k=1"])
  assert [k.split(" ")[0] for k in results] == ["start", "final"]


def test_a_lora_run_of_another_model_is_refused(chain, tmp_path):
  a, b, _ = chain
  other = str(tmp_path / "other")
  shutil.copytree(a, other)
  info = json.load(open(os.path.join(other, "run.json")))
  info["config"]["model"]["pretrained"] = "smollm2"
  json.dump(info, open(os.path.join(other, "run.json"), "w"))
  with pytest.raises(errors.UserError, match=f"init_from={other}: a LoRA run of "
                     "model.pretrained='smollm2'; this run's is None"):
    train.run_final_params(_ctx(b), other)


def test_one_stage_on_a_pretrained_model_is_evaluated_against_the_model_as_loaded(chain,
                                                                                tmp_path):
  a = str(tmp_path / "a")
  shutil.copytree(chain[0], a)
  shutil.rmtree(train.params_path(a, "base"))  # A leaves base and sft: now one stage, sft
  ctx = _ctx(a)
  loaded = train.base_params(ctx)[0]
  ctx.pretrained_params = loaded  # as `prepare` holds an imported model
  stages = train.stage_params(ctx, a)
  assert list(stages) == ["start (pretrained)", "final (sft)"]
  assert stages["start (pretrained)"] is loaded


@pytest.fixture(scope="module")
def pretrained_chain(chain, tmp_path_factory):
  """P: run A exported as an HF folder; D: one LoRA SFT stage on P; E: LoRA GRPO from D."""
  root = tmp_path_factory.mktemp("pretrained_chain")
  p, d, e = (str(root / n) for n in "pde")
  export.run(chain[0], p)
  on_p = [f"model.pretrained={p}", "base.steps=0"]
  train.run("sft", d, MICRO + LORA + on_p + ["sft.steps=1", "sft.batch_size=4"])
  train.run("grpo", e, MICRO + LORA + on_p + ["rl.steps=1", f"init_from={d}"])
  return p, d, e


def test_runs_on_a_pretrained_model_start_from_it_and_fold_in_turn(pretrained_chain):
  p, d, e = pretrained_chain
  loaded = jax.tree.map(np.asarray, pretrained.load_pretrained(p)[1])
  ctx_d = _ctx(d)
  stages = train.stage_params(ctx_d, d)
  assert list(stages) == ["start (pretrained)", "final (sft)"]
  _assert_trees_close(stages["start (pretrained)"], loaded)
  want_e = _fold(loaded, _saved(train.params_path(d, "sft")))
  _assert_trees_close(train.base_params(_ctx(e))[0], want_e)
  results = evaluate.run(d, ["eval.num_questions=2", "eval.k=1"])
  assert [k.split(" ")[0] for k in results] == ["start", "final"]
  with pytest.raises(errors.UserError, match=f"--peft: {e} started from init_from={d}"):
    export.run(e, str(Path(p).parent / "peft_out"), peft=True)
