"""A LoRA run end to end on the micro model: base, guided distillation and RL (MRPV with the
route-contrast term) train adapters only; stage params and checkpoints hold only them; a
stage restored from its checkpoint equals the one saved; eval runs; `realm-jax export`
writes a folder transformers loads with the run's logits."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from realm_jax import model
from realm_jax.cli import evaluate, export, main as cli_main, train
from realm_jax.model import lora
from realm_jax.train import metrics
from tests.test_train import MICRO, small_stages

LORA = ["model.lora_rank=4", "model.lora_alpha=8"]


def _keys(tree) -> set[str]:
  return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)}


def _saved_tree(path):
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.abspath(path))


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("lora_r1"))
  train.run("realm_r1", wd, MICRO + small_stages("realm_r1") + LORA)
  return wd


def test_stages_save_adapters_only_and_leave_the_base_untouched(lora_run):
  wd = lora_run
  cfg = train.load_config(wd)
  ctx = train.prepare(cfg, wd, create=False)
  base = train.base_params(ctx)[0]
  assert not lora.has_adapters(base)
  for phase in ("base", "sft", "rl"):
    saved = _saved_tree(train.params_path(wd, phase))
    assert _keys(saved) and all(k.endswith(("['lora_a']", "['lora_b']")) for k in _keys(saved))
  # the RL checkpoint: adapters and their optimizer moments, nothing of the base's size
  ckpt = os.path.join(wd, "ckpt", "rl")
  step = max(int(s) for s in os.listdir(ckpt) if s.isdigit())
  state = _saved_tree(os.path.join(ckpt, str(step), "state"))
  n_adapters = lora.num_adapter_params(ctx.model_cfg)
  assert sum(np.size(x) for x in jax.tree.leaves(state["params"])) == n_adapters
  assert sum(np.size(x) for x in jax.tree.leaves(state["opt_state"])) < 3 * n_adapters + 16
  final = train.run_params(ctx, train.params_path(wd, "rl"))
  trained, frozen = lora.split(final)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)
  assert any(np.abs(np.asarray(x)).max() > 0 for p, x in
             jax.tree_util.tree_leaves_with_path(trained) if p[-1].key == "lora_b")
  rows = [r for r in metrics.read_metrics(wd, "rl") if "loss" in r]
  assert [r["step"] for r in rows] == [0, 1]
  assert all(np.isfinite(r["contrast_loss"]) and np.isfinite(r["kl_k3"]) for r in rows)


def test_a_stage_restored_from_its_checkpoint_equals_the_saved_one(lora_run, tmp_path):
  wd = str(tmp_path / "copy")
  shutil.copytree(lora_run, wd)
  saved = _saved_tree(train.params_path(wd, "rl"))
  shutil.rmtree(train.params_path(wd, "rl"))
  os.remove(os.path.join(wd, "DONE"))
  train.run("realm_r1", wd, MICRO + small_stages("realm_r1") + LORA)  # RL restores step 2
  again = _saved_tree(train.params_path(wd, "rl"))
  assert _keys(again) == _keys(saved)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(saved)):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in metrics.read_metrics(wd, "rl") if "loss" in r] == [0, 1]


def test_eval_and_export_of_a_lora_run(lora_run, tmp_path, capsys):
  import torch
  import transformers
  results = evaluate.run(lora_run)
  assert [k.split(" ")[0] for k in results] == ["start", "final"]
  out = tmp_path / "hf"
  cli_main.main(["export", "--workdir", lora_run, "--out", str(out), "--peft"])
  assert "wrote" in capsys.readouterr().out
  assert {"config.json", "model.safetensors", "tokenizer.model"} <= set(os.listdir(out))
  assert {"adapter_config.json", "adapter_model.safetensors"} <= set(os.listdir(out / "peft"))
  cfg = train.load_config(lora_run)
  ctx = train.prepare(cfg, lora_run, create=False)
  mask = np.array([[1] * 8, [0] * 3 + [1] * 5], bool)
  tokens = np.random.default_rng(0).integers(3, ctx.model_cfg.vocab_size, mask.shape) * mask

  def gap(folder, phase):  # transformers on the export against the stage's own params
    params = train.run_params(ctx, train.params_path(lora_run, phase))
    ours = np.asarray(model.apply(params, ctx.model_cfg, tokens, mask)[0])
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
      theirs = m(input_ids=torch.tensor(tokens), attention_mask=torch.tensor(mask.astype(np.int64))
                 ).logits.numpy()
    return np.abs(theirs - ours)[mask].max()

  assert gap(out, "rl") < 1e-4  # the default phase: the run's last
  cli_main.main(["export", "--workdir", lora_run, "--out", str(tmp_path / "sft"), "--phase", "sft"])
  assert "(sft params" in capsys.readouterr().out
  assert gap(tmp_path / "sft", "sft") < 1e-4
  assert gap(tmp_path / "sft", "rl") > 1e-3  # a different stage: the phase was honoured
  with pytest.raises(Exception, match="no finished stage 'rft'"):
    export.run(lora_run, str(tmp_path / "x"), phase="rft")
