"""ReaLM-R1 on the real SmolLM2-135M-Instruct with gsm_symbolic: the config and a CPU smoke run.

The smoke run is the experiment's own code path (GGUF import, chat prompts,
guided-distillation SFT, RL with MRPV + EAAI and the route-contrast term,
evaluation with and without routes) shrunk to one SFT step and one RL step of
2 prompts x 2 samples. To fit two CPU cores, RL prompts are cut to their last
128 tokens (`prompt_buckets`; the cut is counted in `prompts_too_long`) and
SFT/route sequences to 192; the real buckets are checked separately against
the tokenized data.
"""

import math
import os

import numpy as np
import pytest

from realm_jax import configs
from realm_jax.rl import corpus, mrpv
from realm_jax.data import pipeline as data_lib
from realm_jax.cli import evaluate
from realm_jax.model import gguf as gguf_import
from realm_jax.train import metrics
from realm_jax.model import pretrained
from realm_jax.rl import loop as rl_loop
from realm_jax.train import generation
from realm_jax.cli import train
from realm_jax.evaluation import accuracy

EXPERIMENT = "realm_r1_smollm2"
SMOKE = [
    "mesh=1,1,1", "model.remat=false", "data.num_train=16", "data.num_eval=2",
    "data.prompt_buckets=128", "data.sft_buckets=192",
    "sft.steps=1", "sft.batch_size=2", "sft.warmup=1", "sft.route_share=0",
    "rl.steps=1", "rl.num_minibatches=1", "rl.batch_prompts=2", "rl.group_size=2",
    "rl.max_new_tokens=16", "rl.warmup=1",
    "eval.num_questions=2", "eval.k=1", "eval.max_new_tokens=16", "eval.batch_size=2",
]


def test_config_is_realm_r1_on_smollm2_and_gsm_symbolic():
  cfg = configs.load_experiment(EXPERIMENT)
  assert cfg.model.pretrained == "smollm2" and cfg.data.source == "gym:gsm_symbolic"
  assert cfg.sft.steps > 0 and cfg.rl.steps > 0 and cfg.rl.routes == "eaai"
  assert cfg.rl.mrpv.num_routes == 2 and cfg.rl.mrpv.contrast_coef > 0 and cfg.rl.mrpv.w_ver > 0
  assert 1e-6 <= cfg.rl.lr <= 5e-6 and cfg.rl.loss.kl_coef == pytest.approx(0.04)
  assert (cfg.rl.batch_prompts, cfg.rl.group_size, cfg.rl.max_new_tokens) == (16, 8, 256)
  # The full default instructions (an instruct model reads them), not the tiny templates.
  default = mrpv.MRPVConfig()
  assert cfg.rl.mrpv.with_routes_template == default.with_routes_template
  assert cfg.rl.mrpv.without_routes_template == default.without_routes_template


def _chat_len(tok, prompt: str) -> int:
  return len(tok.encode(tok.apply_chat_template([{"role": "user", "content": prompt}]),
                        add_bos=True))


def test_buckets_hold_gsm_symbolic_with_two_routes_under_the_smollm2_tokenizer():
  cfg = configs.load_experiment(EXPERIMENT, ["data.num_train=240", "data.num_eval=16"])
  tok = pretrained.load_pretrained_tokenizer(gguf_import.smollm2_gguf_path())
  data = corpus.build_run_data(cfg.data)
  K, m = cfg.rl.mrpv.num_routes, cfg.rl.mrpv
  rng = np.random.default_rng(0)
  assert all(ex.cot for ex in data.train + data.eval)  # gsm_symbolic ships a reference CoT
  for ex in data.train + data.eval:
    assert len(ex.routes) == 1 + cfg.data.negatives_per_question
    assert [r.positive for r in ex.routes] == [True] + [False] * cfg.data.negatives_per_question
    prompt, labels, texts = corpus.route_prompt(ex, rng, m, K)
    assert len(texts) == K
    assert _chat_len(tok, prompt) <= cfg.data.prompt_buckets[-1], ex.id
    sft_len = _chat_len(tok, prompt) + len(tok.encode(corpus.format_completion(ex.cot, ex.answer,
                                                                               labels))) + 1
    assert sft_len <= cfg.data.sft_buckets[-1], ex.id
    for t in texts:  # route-contrast rows: question, then the route
      assert len(tok.encode(ex.question + "\n", add_bos=True) + tok.encode(t)) \
          <= cfg.data.sft_buckets[-1], ex.id
  need = cfg.data.prompt_buckets[-1] + cfg.rl.max_new_tokens
  assert need <= 8192  # SmolLM2's context (max_seq_len from the GGUF metadata)


def _spy(mp, module, name, log):
  """Replaces module.name by a wrapper that appends (args, kwargs, result) to `log`."""
  f = getattr(module, name)

  def spy(*a, **k):
    out = f(*a, **k)
    log.append((a, k, out))
    return out
  mp.setattr(module, name, spy)


# The end of a ChatML user turn and the start of the assistant's.
CHAT_TAIL = "<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """train.run once, recording GGUF loads, SFT records and RL prompt tokens."""
  wd = str(tmp_path_factory.mktemp("smollm2_r1"))
  log = {"load_pretrained": [], "load_pretrained_tokenizer": [], "sft_batches": [],
         "encode_prompts": []}
  with pytest.MonkeyPatch.context() as mp:
    _spy(mp, pretrained, "load_pretrained", log["load_pretrained"])
    _spy(mp, pretrained, "load_pretrained_tokenizer", log["load_pretrained_tokenizer"])
    _spy(mp, data_lib, "sft_batches", log["sft_batches"])
    _spy(mp, rl_loop, "encode_prompts", log["encode_prompts"])
    train.run(EXPERIMENT, wd, SMOKE)
  return wd, log


def _ends_with_chat_tail(tok, tokens, mask) -> bool:
  tail = tok.encode(CHAT_TAIL)
  return all(list(row[m.astype(bool)][-len(tail):]) == tail for row, m in zip(tokens, mask))


@pytest.mark.slow  # ~2 min of CPU (two GGUF imports, 4 compiled phases of a 135M model); CI runs it
def test_smoke_run_trains_saves_and_evaluates(smoke_run, monkeypatch):
  wd, log = smoke_run
  # The GGUF is read once for the weights and once for the tokenizer, not per stage.
  assert len(log["load_pretrained"]) == 1 and len(log["load_pretrained_tokenizer"]) == 1
  tok = log["load_pretrained_tokenizer"][0][2]
  # SFT and RL both show the model chat-formatted prompts (what it was instructed on).
  (records, *_), _, _ = log["sft_batches"][0]
  assert records and all(p.startswith("<|im_start|>user\n") and p.endswith(CHAT_TAIL)
                         for p, _ in records)
  assert log["encode_prompts"] and all(_ends_with_chat_tail(tok, *out[:2])
                                       for _, _, out in log["encode_prompts"])
  assert os.path.exists(os.path.join(wd, "DONE"))
  for phase in ("sft", "rl"):
    assert os.path.isdir(train.params_path(wd, phase)), phase
  sft = metrics.read_metrics(wd, "sft")
  assert any(r.get("teacher_examples", 0) >= 2 for r in metrics.read_metrics(wd, "sft_teacher"))
  sft_rows = [r for r in sft if "loss" in r]
  assert [r["step"] for r in sft_rows] == [0]
  assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in sft_rows)
  rl_rows = metrics.read_metrics(wd, "rl")
  assert [r["step"] for r in rl_rows] == [0]
  r = rl_rows[0]
  for key in ("loss", "grad_norm", "reward", "reward/answer", "reward/verification",
              "reward/format", "kl_k1", "kl_k2", "kl_k3", "entropy", "completion_len_mean",
              "contrast_loss", "contrast_margin_mean"):
    assert key in r and math.isfinite(r[key]), (key, r)
  assert 0 < r["completion_len_mean"] <= 16
  # EAAI starts with routes on every prompt; 2 routes always make the prompt > 128 tokens.
  assert r["p_routes"] == 1 and r["num_routes"] == 2 and r["prompts_too_long"] == 2

  encoded = []
  _spy(monkeypatch, generation, "encode_prompts", encoded)  # what evaluation's sampler encodes
  results = evaluate.run(wd)
  assert encoded and all(_ends_with_chat_tail(tok, *out[:2]) for _, _, out in encoded)
  assert [k.split(" ")[0] for k in results] == ["start", "final"]  # the SFT params, the RL params
  for settings in results.values():
    assert set(settings) == {"without routes", "with routes"}
    for res in settings.values():
      assert res["n"] == 2
      assert 0 <= res["accuracy_ci_low"] <= res["accuracy"] <= res["accuracy_ci_high"] <= 1
    assert 0 <= settings["with routes"]["verification_accuracy"] <= 1


def test_wilson_bounds_at_zero_accuracy_are_exact():
  # The untrained 135M model scores 0 here; p = 0 gives [0, z^2/n / (1 + z^2/n)] exactly.
  lo, hi = accuracy.wilson_interval(0, 20)
  assert lo == 0.0 and hi == pytest.approx(3.8416 / 20 / (1 + 3.8416 / 20), abs=1e-12)
  lo, hi = accuracy.wilson_interval(20, 20)
  assert hi == 1.0 and lo == pytest.approx(1 - 3.8416 / 20 / (1 + 3.8416 / 20), abs=1e-12)


@pytest.mark.slow  # ~1 min: a 135M model's sampler, reference pass and update compile on CPU
def test_a_lora_grpo_step_on_smollm2_trains_the_adapters_against_the_frozen_base():
  import dataclasses
  import jax
  import jax.numpy as jnp
  from realm_jax.model import lora, sampling
  from realm_jax.model.config import LoraConfig
  from realm_jax.rl import losses, stage as rl_stage, step as rl_step
  from realm_jax.rl.batch import UpdateBatch
  from realm_jax.train import step as train_step

  path = gguf_import.smollm2_gguf_path()
  cfg, base = pretrained.load_pretrained(path)
  cfg = dataclasses.replace(cfg, lora=LoraConfig(rank=8, alpha=16.0, targets=("q_proj", "v_proj")))
  tok = pretrained.load_pretrained_tokenizer(path)
  params = lora.add_adapters(base, cfg, jax.random.key(0))
  ref = rl_stage.reference_params(params)
  prompts = [generation.chat_prompt(tok, q) for q in ("What is 2 + 3?", "Name a colour.")]
  ids = [tok.encode(p, add_bos=True) for p in prompts]
  T, M, G = max(map(len, ids)), 8, 2
  tokens, mask = data_lib.pad_left(ids, T, tok.pad_id)
  scfg = sampling.SamplingConfig(max_new_tokens=M, temperature=1.0, num_samples=G,
                                 pad_id=tok.pad_id)
  roll = sampling.generate(params, cfg, jnp.asarray(tokens), jnp.asarray(mask),
                           jax.random.key(1), scfg)
  logprob = rl_step.make_logprob_fn(cfg, completion_len=M)
  ref_logp = logprob(ref, roll.tokens, roll.mask)
  batch = UpdateBatch(tokens=roll.tokens, mask=roll.mask.astype(jnp.int32),
                      completion_mask=roll.completion_mask.astype(jnp.int32),
                      adv=jnp.asarray([1.0, -1.0, 1.0, -1.0]), ref_logp=ref_logp,
                      sampler_logp=roll.logprobs[:, 1:], old_logp=None, route=None)
  opt = train_step.make_optimizer(1e-3, 0, 10, 0.0, 1.0)
  update = rl_step.make_rl_step(cfg, opt, losses.LossConfig(kl_coef=0.04), completion_len=M)
  state, m = update(train_step.init_state(params, opt), batch)
  assert np.isfinite(float(m["loss"])) and float(m["grad_norm"]) > 0
  # fresh adapters (B = 0): policy = base = reference, so KL is 0 and the sampler agrees
  assert abs(float(m["kl_k3"])) < 1e-5 and float(m["sampler_trainer_logp_gap"]) < 1e-3
  trained, frozen = lora.split(state.params)
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(base)):
    np.testing.assert_array_equal(a, b)
  assert all(float(jnp.abs(x).max()) > 0 for p, x in jax.tree_util.tree_leaves_with_path(trained)
             if p[-1].key == "lora_b")
  np.testing.assert_array_equal(logprob(ref, roll.tokens, roll.mask), ref_logp)
