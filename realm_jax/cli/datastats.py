"""`realm-jax data stats|routes`: route pools of a source, their statistics, token lengths and
the accuracy of the trivial baselines (`evaluation.baselines`) on them."""

from __future__ import annotations

import numpy as np

from realm_jax import errors
from realm_jax.cli.generate import model_path
from realm_jax.data import domains, sources, teachers
from realm_jax.data.config import MAX_ROUTE_CHARS, DataConfig
from realm_jax.data.records import Example
from realm_jax.evaluation import baselines
from realm_jax.model import pretrained, sampling
from realm_jax.model.tokenizer import load_tokenizer
from realm_jax.rl import corpus
from realm_jax.train import generation


def examples_with_routes(source: str, n: int, seed: int, difficulty: int, negatives: int = 3,
                         route_file: str | None = None,
                         max_route_chars: int = MAX_ROUTE_CHARS) -> list[Example]:
  """A source's examples with labelled route pools (`routes:FILE` reads a written pool); the
  routes of `route_file` over `max_route_chars` characters are refused and counted."""
  if source.startswith("routes:"):
    return teachers.read_route_pool(source.split(":", 1)[1])
  if max_route_chars <= 0:
    raise errors.ConfigError(f"--max-route-chars={max_route_chars} must be > 0")
  examples = sources.load_source(source, n, seed, difficulty)
  cfg = DataConfig(source=source, negatives_per_question=negatives)
  examples = corpus._with_routes(examples, source, cfg, seed)
  if route_file:
    examples = teachers.file_teacher(route_file, examples, max_route_chars, "--max-route-chars")
  return examples


def stats_table(examples: list[Example], tokenizer=None, reference: list[Example] | None = None,
                domain_map: dict[str, domains.Domain] | None = None) -> str:
  """Route pool counts, token lengths (with a tokenizer), then one row per trivial baseline: its
  share of `examples` correct, the most frequent answer taken on `reference` (default: the
  examples themselves)."""
  s = teachers.route_pool_stats(examples)
  rows = [("items", s["items"]), ("items with a positive route", s["items_with_positive"]),
          ("items with a negative route", s["items_with_negative"]), ("routes", s["routes"]),
          ("positive routes", f"{s['positive']} ({s['positive_share']:.1%})"),
          ("negative routes", f"{s['negative']} ({s['negative_share']:.1%})")]
  rows += [(f"  negatives: {e}", f"{share:.1%}") for e, share in s["error_share"].items()]
  rows += [(f"  source: {src}", f"{share:.1%}") for src, share in s["source_share"].items()]
  if tokenizer is not None and examples:
    for name, texts in (("question tokens", [ex.question for ex in examples]),
                        ("CoT tokens", [ex.cot or "" for ex in examples]),
                        ("route tokens", [r.text for ex in examples for r in ex.routes])):
      if texts:
        lens = np.array([len(tokenizer.encode(t)) for t in texts])
        rows.append((f"{name} min/median/max", f"{lens.min()}/{int(np.median(lens))}/{lens.max()}"))
  accs = baselines.trivial_baselines(examples, reference, domain_map)
  if accs:
    where = "these items" if reference is None else f"{len(reference)} other items"
    rows.append(("trivial baselines", f"share correct (mode of {where})"))
    rows += [(f"  baseline: {name}", f"{acc:.1%}") for name, acc in accs.items()]
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def stats_tokenizer(name: str):
  """A tokenizer file or folder, or a model's own ('smollm2', a .gguf file)."""
  path = model_path(name)
  if str(path).endswith(".gguf"):
    return pretrained.load_pretrained_tokenizer(path)
  return load_tokenizer(path)


def print_stats(source: str, tokenizer: str | None = None, n: int = 200, seed: int = 0,
                difficulty: int = 0) -> None:
  tok = stats_tokenizer(tokenizer) if tokenizer else None
  examples = examples_with_routes(source, n, seed, difficulty)
  reference = None  # the mode comes from another sample of the source where there is one
  if not source.startswith("routes:"):
    reference = sources.load_source(source, n, seed + 1, difficulty)
    if {ex.id for ex in reference} == {ex.id for ex in examples}:  # a small file: all of it
      reference = None
  print(stats_table(examples, tok, reference, baselines.source_domains(source)))


def model_generate_fn(model: str, max_new_tokens: int = 256, temperature: float = 0.8,
                      seed: int = 0):
  """A `teachers.model_teacher` generate_fn over any model realm_jax loads (chat prompts)."""
  path = model_path(model)
  cfg, params = pretrained.load_pretrained(path)
  tok = pretrained.load_pretrained_tokenizer(path)
  scfg = sampling.SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                 stop_ids=tuple(tok.stop_ids), num_samples=1, pad_id=tok.pad_id)

  def generate(prompts: list[str]) -> list[str]:
    outs = generation.generate_texts(params, cfg, tok, prompts, scfg, min(16, len(prompts)),
                                    chat=True, seed=seed)
    return [o[0] for o in outs]

  return generate


def write_routes(source: str, out: str, n: int = 200, seed: int = 0, difficulty: int = 0,
                 negatives: int = 3, route_file: str | None = None,
                 teacher_model: str | None = None, samples: int = 2,
                 max_new_tokens: int = 256, max_route_chars: int = MAX_ROUTE_CHARS) -> None:
  examples = examples_with_routes(source, n, seed, difficulty, negatives, route_file,
                                  max_route_chars)
  if teacher_model:
    rule_book = None
    if source.startswith("domain:"):
      rule_book = domains.get_domain(source.split(":", 1)[1]).rule_book()
    examples = teachers.model_teacher(
        examples, model_generate_fn(teacher_model, max_new_tokens, seed=seed), rule_book, samples)
  teachers.write_route_pool(out, examples)
  print(f"wrote {len(examples)} items to {out}")
  print(stats_table(examples))
