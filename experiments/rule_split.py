"""Accuracy split by whether a test question needs a rule the level-0 start never distilled.

    python -m experiments.rule_split experiments/results/reproduce_bf16_level1

For a reproduction trained at level L >= 1 (`reproduce --level L`), it rebuilds each kept
run's test questions at level L from the overrides the run records (the same questions
the run was tested on: the digest in its eval.json must match), and labels each question
by the rules its teacher CoT cites (`[R5]` ...) that no level-0 test CoT cites. It writes
OUT/rule_split.{json,md}: per method, its accuracy without and with routes on the
questions that need no new rule and on those that need one, as a mean over seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import sys

import numpy as np

from experiments import reproduce, reproduce_report
from realm_jax import configs
from realm_jax.cli.evaluate import questions_digest
from realm_jax.rl import corpus

CITED = re.compile(r"\[(R\d+)\]")
GROUPS = ("no new rule", "a new rule")


def cited(cot: str) -> set[str]:
  return set(CITED.findall(cot or ""))


def questions(name: str, overrides: list[str], level: int):
  """The test questions of a run at `level` and the rules level 0's test CoTs cite."""
  cfg = configs.load_experiment(reproduce.METHODS[name].experiment,
                                [*overrides, f"data.difficulty={level}"])
  return _questions(cfg.data, cfg.eval.num_questions)


@functools.lru_cache(maxsize=8)
def _questions(data_cfg, n: int):
  level0 = corpus.build_run_data(dataclasses.replace(data_cfg, difficulty=0)).eval
  return corpus.build_run_data(data_cfg).eval[:n], set().union(*(cited(ex.cot) for ex in level0))


def new_rule_labels(name: str, overrides: list[str], level: int, eval_path: str) -> np.ndarray:
  """Per test question of the eval file at `level`, whether it needs a rule no level-0 CoT
  cites; the file must hold the questions `overrides` give (its digest)."""
  with open(eval_path) as f:
    digest = json.load(f)["questions_sha256"]
  test, known = questions(name, overrides, level)
  if questions_digest(test) != digest:
    raise ValueError(f"{eval_path}: tested other questions than its recorded overrides give at "
                     f"level {level}; it cannot be split")
  return np.array([bool(cited(ex.cot) - known) for ex in test])


def split_run(result_dir: str, name: str, level: int) -> dict:
  """{setting: {group: (correct, questions)}} of one kept run's eval.json."""
  with open(os.path.join(result_dir, "run_summary.json")) as f:
    overrides = json.load(f)["overrides"]
  path = os.path.join(result_dir, "eval.json")
  new = new_rule_labels(name, overrides, level, path)
  out = {}
  for setting, c in reproduce_report.correctness(path).items():
    c = np.asarray(c, bool)
    out[setting] = {g: (int(c[new == is_new].sum()), int((new == is_new).sum()))
                    for g, is_new in zip(GROUPS, (False, True))}
  return out


def split(out: str) -> dict:
  with open(os.path.join(out, "results.json")) as f:
    results = json.load(f)
  level, seeds = results["schedule"]["levels"][0], results["seeds"]
  if level < 1:
    raise ValueError(f"{out}/results.json: trained at level {level}; level 0 has no new rule")
  table = {}
  for name in results["summary"]:
    runs = [reproduce.result_dir(out, s, name) for s in range(seeds)]
    runs = [split_run(d, name, level) for d in runs if os.path.exists(os.path.join(d, "eval.json"))]
    table[name] = {"seeds": len(runs), **{
        setting: {g: _mean(r[setting][g] for r in runs) for g in GROUPS} for setting in runs[0]}}
  return {"level": level, "results": table}


def _mean(counts) -> dict:
  """Mean accuracy over seeds of (correct, questions) pairs; None where a group is empty."""
  counts = list(counts)
  n = counts[0][1]
  acc = float(np.mean([c / q for c, q in counts])) if all(q for _, q in counts) else None
  return {"accuracy": acc, "questions": n}


def markdown(res: dict) -> str:
  lv = res["level"]
  lines = [f"| method | seeds | L{lv}, no new rule | L{lv}, a new rule | with routes, no new rule "
           "| with routes, a new rule |", "|---|---|---|---|---|---|"]
  for name, r in res["results"].items():
    cells = [f"{_f(r[s][g]['accuracy'])} of {r[s][g]['questions']}" if s in r else ""
             for s in ("without routes", "with routes") for g in GROUPS]
    lines.append(f"| {name} | {r['seeds']} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def _f(x: float | None) -> str:
  return "n/a" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print("usage: python -m experiments.rule_split RESULTS_DIR", file=sys.stderr)
    return 2
  res = split(argv[0])
  with open(os.path.join(argv[0], "rule_split.json"), "w") as f:
    json.dump(res, f, indent=1)
  with open(os.path.join(argv[0], "rule_split.md"), "w") as f:
    f.write(markdown(res))
  print(markdown(res), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
