"""What each stage trains on, built from examples with route pools.

- `build_run_data`: train/eval examples with labelled route pools (domain
  teacher for built-in domains; a route file when given; otherwise the
  reference CoT as the positive route and answer-perturbed copies of it as
  negatives, each recorded with its error).
- `format_completion`: the MRPV completion format
  `<verify>A: correct; B: wrong</verify><think>...</think><answer>...</answer>`.
- `route_prompt`: one prompt with K sampled, shuffled, truncated routes.
- `sft_pairs`: (prompt, completion) pairs for guided distillation: the student
  sees the question (and, for a share of items, routes with gold verdicts),
  never the rule book.
Host-side and deterministic given a numpy Generator.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from realm_jax.rl import mrpv
from realm_jax.data import sources, teachers
from realm_jax.data.config import DataConfig
from realm_jax.data.records import Example, Route


@dataclasses.dataclass
class RunData:
  train: list[Example]
  eval: list[Example]
  report: dict


def _perturbed_routes(ex: Example, rng: np.random.Generator, n: int) -> tuple[Route, ...]:
  """Reference CoT as the positive; copies with a wrong final answer as negatives."""
  if not ex.cot:
    return ()
  from realm_jax.data import answers
  pos = Route(text=f"{ex.cot}\nAnswer: {ex.answer}", answer=ex.answer, positive=True,
              source="reference")
  gold = answers.normalize_number(ex.answer)
  negs = []
  for j in range(n):
    if gold is None:
      break
    delta = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
    wrong = gold + delta if float(gold).is_integer() else round(gold * (1.1 + 0.1 * j), 2)
    wrong_s = str(int(wrong)) if float(wrong).is_integer() else str(wrong)
    negs.append(Route(text=f"{ex.cot}\nAnswer: {wrong_s}", answer=wrong_s, positive=False,
                      source="perturbation", error="arithmetic_slip"))
  return (pos, *negs)


def _with_routes(examples: list[Example], spec: str, cfg: DataConfig, seed: int) -> list[Example]:
  rng = np.random.default_rng(seed)
  if spec.startswith("domain:"):
    from realm_jax.data import domains
    return teachers.domain_teacher(domains.get_domain(spec.split(":", 1)[1]), examples, rng,
                                   cfg.negatives_per_question)
  return [dataclasses.replace(ex, routes=_perturbed_routes(ex, rng, cfg.negatives_per_question))
          for ex in examples]


def build_run_data(cfg: DataConfig) -> RunData:
  """Deterministic train/eval split with route pools; eval questions never in train."""
  specs = [s.strip() for s in cfg.source.split(",") if s.strip()]
  train: list[Example] = []
  evals: list[Example] = []
  for i, spec in enumerate(specs):
    n_train = cfg.num_train // len(specs)
    n_eval = cfg.num_eval // len(specs)
    examples = sources.load_source(spec, n_train + 2 * n_eval, cfg.seed + 7919 * i, cfg.difficulty)
    examples = _with_routes(examples, spec, cfg, cfg.seed + 104729 * i)
    seen: set[str] = set()
    unique = [ex for ex in examples if not (ex.question in seen or seen.add(ex.question))]
    evals.extend(unique[:n_eval])
    train.extend(unique[n_eval:n_eval + n_train])
  if cfg.route_file:
    train = teachers.file_teacher(cfg.route_file, train, cfg.max_route_chars)
  report = {"num_train": len(train), "num_eval": len(evals)}
  return RunData(train=train, eval=evals, report=report)


def format_completion(cot: str, answer: str, verdicts: Sequence[bool] | None = None) -> str:
  verify = ""
  if verdicts is not None:
    verify = "<verify>" + "; ".join(
        f"{mrpv.ROUTE_LETTERS[k]}: {'correct' if ok else 'wrong'}" for k, ok in enumerate(verdicts)
    ) + "</verify>"
  return f"{verify}<think>{cot}</think><answer>{answer}</answer>"


def route_prompt(ex: Example, rng: np.random.Generator, cfg: mrpv.MRPVConfig, num_routes: int,
                 prefix_fraction: float = 1.0, negatives: bool = True
                 ) -> tuple[str, list[bool], list[str]]:
  """(prompt, labels of the shown routes, shown route texts); no routes when K=0."""
  pool = [r for r in ex.routes if negatives or r.positive]
  if num_routes <= 0 or not pool:
    return mrpv.build_prompt(ex.question, [], cfg), [], []
  idx = mrpv.sample_routes([r.positive for r in pool], num_routes, cfg, rng)
  texts = [mrpv.truncate_route(pool[i].text, prefix_fraction) for i in idx]
  return mrpv.build_prompt(ex.question, texts, cfg), [pool[i].positive for i in idx], texts


def sft_pairs(examples: Sequence[Example], rng: np.random.Generator, cfg: mrpv.MRPVConfig,
              route_share: float, num_routes: int) -> list[tuple[str, str]]:
  """Guided-distillation targets: the teacher's (rule-citing) CoT, student sees no rules."""
  pairs = []
  for ex in examples:
    if not ex.cot:
      continue
    if ex.routes and rng.random() < route_share:
      prompt, labels, _ = route_prompt(ex, rng, cfg, num_routes)
      pairs.append((prompt, format_completion(ex.cot, ex.answer, labels)))
    else:
      pairs.append((mrpv.build_prompt(ex.question, [], cfg), format_completion(ex.cot, ex.answer)))
  return pairs


def tokenizer_corpus(examples: Sequence[Example], cfg: mrpv.MRPVConfig) -> Iterator[str]:
  """Every kind of text the model will read or write, for training a tokenizer."""
  for ex in examples:
    yield mrpv.build_prompt(ex.question, [r.text for r in ex.routes[:2]], cfg)
    yield format_completion(ex.cot or "", ex.answer, [True, False])
