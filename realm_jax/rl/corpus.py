"""What each stage trains on, built from examples with route pools.

- `build_run_data`: train/eval/validation examples with labelled route pools (domain
  teacher for built-in domains; a route file when given; otherwise the
  reference CoT as the positive route and answer-perturbed copies of it as
  negatives, each recorded with its error).
- `format_completion`: the MRPV completion format
  `<verify>A: correct; B: wrong</verify><think>...</think><answer>...</answer>`.
- `route_prompt`: one prompt with K sampled, shuffled, truncated routes.
- `sft_pairs`: (prompt, completion) pairs for guided distillation: the student
  sees the question only (and routes with gold verdicts for `route_share` of the
  items, 0 by default), never the rule book.
Host-side and deterministic given a numpy Generator.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import numpy as np

from realm_jax.data import answers, domains, sources, teachers
from realm_jax.data.config import DataConfig
from realm_jax.data.records import Example, Route
from realm_jax.rl import mrpv


@dataclasses.dataclass
class RunData:
  train: list[Example]
  eval: list[Example]  # the test slice `realm-jax eval` reports
  report: dict
  valid: list[Example] = dataclasses.field(default_factory=list)  # what the stages validate on


def _perturbed_routes(ex: Example, rng: np.random.Generator, n: int) -> tuple[Route, ...]:
  """Reference CoT as the positive; copies with a wrong final answer as negatives."""
  if not ex.cot:
    return ()
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
    domain = domains.get_domain(spec.split(":", 1)[1])
    examples = teachers.domain_teacher(domain, examples, rng, cfg.negatives_per_question)
    if cfg.positives_per_question > 1:  # more correct routes: other wordings and step orders
      examples = [ex.with_routes(domain.positive_routes(ex, cfg.positives_per_question)[1:])
                  for ex in examples]
    return examples
  return [dataclasses.replace(ex, routes=_perturbed_routes(ex, rng, cfg.negatives_per_question))
          for ex in examples]


def build_run_data(cfg: DataConfig) -> RunData:
  """Deterministic train/eval/validation split with route pools; no question in two slices.

  Per source, the first `n_train + 2 * n_eval` examples, repeated questions dropped, give
  eval then train; the validation slice is the next `n_valid` new questions of the
  `2 * n_valid` examples after those (same source and difficulty). Train and eval are thus
  what they were without a validation slice wherever a source's first examples do not depend
  on how many are drawn (built-in domains, gym; a gsm8k file's seeded sample does). A question
  is kept once across all sources and slices.
  """
  specs = [s.strip() for s in cfg.source.split(",") if s.strip()]
  train: list[Example] = []
  evals: list[Example] = []
  valid: list[Example] = []
  seen: set[str] = set()
  new = lambda exs: [ex for ex in exs if not (ex.question in seen or seen.add(ex.question))]
  for i, spec in enumerate(specs):
    n_train = cfg.num_train // len(specs)
    n_eval = cfg.num_eval // len(specs)
    n_valid = cfg.num_valid // len(specs)
    n_pool = n_train + 2 * n_eval
    examples = sources.load_source(spec, n_pool + 2 * n_valid, cfg.seed + 7919 * i,
                                   cfg.difficulty)
    unique = new(_with_routes(examples[:n_pool], spec, cfg, cfg.seed + 104729 * i))
    evals.extend(unique[:n_eval])
    train.extend(unique[n_eval:n_eval + n_train])
    held_out = new(examples[n_pool:])[:n_valid]
    valid.extend(_with_routes(held_out, spec, cfg, cfg.seed + 104729 * (i + len(specs))))
  if cfg.route_file:
    train = teachers.file_teacher(cfg.route_file, train, cfg.max_route_chars)
  report = {"num_train": len(train), "num_eval": len(evals), "num_valid": len(valid)}
  return RunData(train=train, eval=evals, report=report, valid=valid)


def format_completion(cot: str, answer: str, verdicts: Sequence[bool] | None = None) -> str:
  verify = ""
  if verdicts is not None:
    verify = "<verify>" + "; ".join(
        f"{mrpv.ROUTE_LETTERS[k]}: {'correct' if ok else 'wrong'}" for k, ok in enumerate(verdicts)
    ) + "</verify>"
  return f"{verify}<think>{cot}</think><answer>{answer}</answer>"


def _steps(text: str) -> list[str]:
  return [line for line in text.splitlines() if line.strip()]


def shown_label(route: Route, shown: str, positives: Sequence[str]) -> bool:
  """The label of `route` as shown (`shown`: its text, possibly truncated by prefix fading).

  A route shown whole keeps its label. A truncated negative whose shown steps (non-blank lines)
  are a line-wise prefix of some positive route's steps (`positives`: the full texts of the
  question's positive routes) shows no error: the error lies in the cut-off part, so it is
  labelled positive. Any other truncated route keeps its label.
  """
  if route.positive or shown == route.text:
    return route.positive
  lines = _steps(shown)
  return any(_steps(p)[:len(lines)] == lines for p in positives)


def route_prompt(ex: Example, rng: np.random.Generator, cfg: mrpv.MRPVConfig, num_routes: int,
                 prefix_fraction: float = 1.0, negatives: bool = True
                 ) -> tuple[str, list[bool], list[str]]:
  """(prompt, labels of the shown routes, shown route texts); no routes when K=0.

  Labels are of what is shown (`shown_label`): "correct" means no error in the shown part, so
  under prefix fading a negative cut before its error (a prefix of a positive route of the
  same question) is labelled correct.
  """
  pool = [r for r in ex.routes if negatives or r.positive]
  if num_routes <= 0 or not pool:
    return mrpv.build_prompt(ex.question, [], cfg), [], []
  idx = mrpv.sample_routes([r.positive for r in pool], num_routes, cfg, rng)
  texts = [mrpv.truncate_route(pool[i].text, prefix_fraction) for i in idx]
  positives = [r.text for r in ex.routes if r.positive]
  labels = [shown_label(pool[i], t, positives) for i, t in zip(idx, texts)]
  return mrpv.build_prompt(ex.question, texts, cfg), labels, texts


def sft_pairs(examples: Sequence[Example], rng: np.random.Generator, cfg: mrpv.MRPVConfig,
              route_share: float, num_routes: int,
              route_examples: Sequence[Example] | None = None) -> list[tuple[str, str]]:
  """Guided-distillation targets: the teacher's (rule-citing) CoT; the student sees no rules.

  With probability `route_share` an item with routes is shown them with gold verdicts (the
  MRPV format); its positive route is then usually the target CoT, so keep it small (the
  `SFTConfig` default is 0: question only, METHOD §4). With `route_examples` (e.g. a harder
  level's questions), item i's routed version is route_examples[i] (cycled) instead: those
  questions are seen only with their routes, so following a verified route is the only way
  to their targets.
  """
  if route_examples is not None and not len(route_examples):
    raise ValueError("sft_pairs: route_examples is empty (no teacher CoT of that level verified)")
  pairs = []
  for i, ex in enumerate(examples):
    if not ex.cot:
      continue
    routed = ex if route_examples is None else route_examples[i % len(route_examples)]
    if routed.routes and routed.cot and rng.random() < route_share:
      prompt, labels, _ = route_prompt(routed, rng, cfg, num_routes)
      pairs.append((prompt, format_completion(routed.cot, routed.answer, labels)))
    else:
      pairs.append((mrpv.build_prompt(ex.question, [], cfg), format_completion(ex.cot, ex.answer)))
  return pairs


def tokenizer_corpus(examples: Sequence[Example], cfg: mrpv.MRPVConfig) -> Iterator[str]:
  """Every kind of text the model will read or write, for training a tokenizer."""
  for ex in examples:
    yield mrpv.build_prompt(ex.question, [r.text for r in ex.routes[:2]], cfg)
    yield format_completion(ex.cot or "", ex.answer, [True, False])
