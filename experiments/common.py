"""Shared pieces of the tiny-model experiments (not an experiment itself).

The tiny setting: a ~0.85M-parameter Llama-style model trained from scratch on a
built-in domain at difficulty 0, SentencePiece tokenizer (512 pieces, digits
split) trained on the run's corpus. Short MRPV templates keep prompts small.
The `base` stage is a brief format warm-up on a few hundred teacher CoTs: our
stand-in for a pretrained base SLM (it follows the format, reasons poorly).
"""

import dataclasses

from realm_jax import configs
from realm_jax.rl import eaai, losses, mrpv

TINY_MRPV = mrpv.MRPVConfig(
    num_routes=2, min_positive=1, min_negative=1, all_same_share=0.2,
    route_template="Route {label}:\n{route}",
    with_routes_template="{question}\n{routes}\nCheck each route, then solve.",
    without_routes_template="{question}\nSolve.",
    w_ans=1.0, w_ver=0.5, w_fmt=0.1, contrast_coef=0.0, contrast_beta=0.1)


def tiny(name: str, domain: str = "tariff") -> configs.ExperimentConfig:
  """Base stage only; methods add their stages on top."""
  return configs.ExperimentConfig(
      name=name,
      # 4 unrolled layers; steps accumulate over 4 microbatches (same loss, ~1.5x faster here)
      model=configs.ModelSpec(scan_layers=False),
      data=configs.DataConfig(source=f"domain:{domain}", difficulty=0, num_train=2000, num_eval=128,
                              prompt_buckets=(96, 160, 256, 320), sft_buckets=(128, 192, 256, 384)),
      base=configs.SFTConfig(steps=100, batch_size=16, lr=2e-3, warmup=20, route_share=0.5,
                             num_items=400, microbatches=4),
      rl=configs.RLConfig(batch_prompts=8, group_size=4, lr=2e-4, warmup=3, max_new_tokens=128,
                          microbatches=4,
                          temperature=1.0, loss=losses.LossConfig(kl_coef=0.04),
                          mrpv=TINY_MRPV, eaai=eaai.EAAIConfig()),
      eval=configs.EvalConfig(num_questions=128, k=4, max_new_tokens=128, batch_size=64),
      checkpoint_every=20)


def with_sft(cfg: configs.ExperimentConfig, steps: int = 200) -> configs.ExperimentConfig:
  """Guided CoT distillation on the full training set: the student sees the question only
  (METHOD §4; the base warm-up is where the MRPV format is shown)."""
  return dataclasses.replace(cfg, sft=configs.SFTConfig(steps=steps, batch_size=16, lr=1e-3,
                                                        warmup=20, route_share=0.0,
                                                        microbatches=4))


def with_rl(cfg: configs.ExperimentConfig, steps: int, **rl) -> configs.ExperimentConfig:
  return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, steps=steps, **rl))


def with_mrpv(cfg: configs.ExperimentConfig, **kw) -> configs.ExperimentConfig:
  return dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, mrpv=dataclasses.replace(cfg.rl.mrpv, **kw)))


RL_STEPS = 40
