"""`realm-jax export` writes a pretrained model's tokenizer that transformers loads as it is."""

import transformers

from realm_jax.cli import export
from realm_jax.model import gguf, pretrained


def test_exported_smollm2_tokenizer_loads_in_transformers_with_the_same_ids(tmp_path):
  tok = pretrained.load_pretrained_tokenizer(gguf.smollm2_gguf_path())
  assert export.write_tokenizer(tok, tmp_path, str(tmp_path)) == \
      "tokenizer.json, tokenizer_config.json"
  hf = transformers.AutoTokenizer.from_pretrained(tmp_path)
  text = "A parcel of 2.5 kg to zone 3 costs $41.20.\nAnswer: 41.2"
  assert hf(text, add_special_tokens=False)["input_ids"] == tok.encode(text)
  assert (hf.eos_token_id, hf.pad_token_id) == (tok.eos_id, tok.pad_id)
  # With the system turn given (SmolLM2's own template adds a default one when it is missing,
  # realm_jax's ChatML rendering does not), both render the same text.
  chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}]
  assert hf.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
      tok.apply_chat_template(chat)
