"""`realm-jax export --workdir W --out DIR [--phase P] [--peft]`: a run as a Hugging Face folder.

DIR gets `config.json` and `model.safetensors` that transformers loads as the
family's `*ForCausalLM`: the run's final params (or those of --phase), with any
LoRA adapters folded into the weights (`lora.merged`), in the run's param dtype.
A pretrained model's tokenizer goes beside them (`tokenizer.json` and
`tokenizer_config.json`, special tokens and chat template included); a tiny
run's SentencePiece model is copied as `tokenizer.model`.

`--peft` (LoRA runs) also writes DIR/peft: the adapters alone in PEFT's layout,
its `base_model_name_or_path` naming the run's `model.pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

from realm_jax import errors
from realm_jax.cli import train
from realm_jax.model import hf, lora, tokenizer as tokenizer_lib


def write_tokenizer(tok, out: Path, workdir: str) -> str:
  """The run's tokenizer in the folder; returns what was written."""
  if isinstance(tok, tokenizer_lib.HFTokenizer):
    (out / "tokenizer.json").write_text(tok.to_json())
    name = lambda i: None if i is None else tok.id_to_token(i)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": name(tok.bos_id),
              "eos_token": name(tok.eos_id), "pad_token": name(tok.pad_id),
              "chat_template": tok.chat_template}
    (out / "tokenizer_config.json").write_text(
        json.dumps({k: v for k, v in config.items() if v is not None}, indent=2) + "\n")
    return "tokenizer.json, tokenizer_config.json"
  source = os.path.join(workdir, "tokenizer.model")
  if os.path.exists(source):
    shutil.copyfile(source, out / "tokenizer.model")
    return "tokenizer.model (SentencePiece)"
  return "no tokenizer"


def run(workdir: str, out: str, phase: str | None = None, peft: bool = False) -> dict:
  """Writes the export; returns {'phase', 'model', 'tokenizer', 'peft'} (paths and notes)."""
  cfg = train.load_config(workdir)
  ctx = train.prepare(cfg, workdir, create=False)
  done = train.finished_phases(workdir)
  if not done:
    raise errors.UserError(f"{workdir} has no finished stage to export: train it to the end "
                           "of a stage first")
  phase = phase or done[-1]
  if phase not in done:
    raise errors.UserError(f"--phase {phase}: {workdir} has no finished stage {phase!r} "
                           f"(finished: {', '.join(done)})")
  if peft and ctx.model_cfg.lora is None:
    raise errors.UserError(f"--peft: {workdir} trained no LoRA adapters (model.lora_rank=0)")
  if peft and cfg.init_from:
    raise errors.UserError(f"--peft: {workdir} started from init_from={cfg.init_from}, so its "
                           f"adapters adapt that run's params, not model.pretrained; export "
                           f"the merged folder (without --peft)")
  params = train.run_params(ctx, train.params_path(workdir, phase))
  plain = dataclasses.replace(ctx.model_cfg, lora=None)
  folder = Path(out)
  hf.save_hf(folder, plain, lora.merged(params, ctx.model_cfg.lora) if ctx.model_cfg.lora
             else params)
  result = {"phase": phase, "model": str(folder),
            "tokenizer": write_tokenizer(ctx.tokenizer, folder, workdir), "peft": None}
  if peft:
    lora.save_peft(folder / "peft", params, ctx.model_cfg.lora, base_model=cfg.model.pretrained)
    result["peft"] = str(folder / "peft")
  return result
