"""experiments.readme_tables: the README's reproduction tables are the committed results."""

import json
import os

import pytest

from experiments import readme_tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_numbers_use_unicode_minus_and_bold_only_intervals_that_exclude_zero():
  assert readme_tables.num(0.01234) == "+0.012" and readme_tables.num(-0.5) == "−0.500"
  assert readme_tables.diff({"diff": 0.02, "ci_low": 0.001, "ci_high": 0.04}) == \
      "**+0.020 (+0.001 .. +0.040)**"
  assert readme_tables.diff({"diff": -0.02, "ci_low": -0.05, "ci_high": -0.0004}) == \
      "**−0.020 (−0.050 .. −0.000)**"  # excludes 0 though it rounds to it
  assert readme_tables.diff({"diff": 0.0, "ci_low": -0.01, "ci_high": 0.0}) == \
      "+0.000 (−0.010 .. +0.000)"  # touches 0: not bold
  assert readme_tables.diff(None) == ""


def test_tables_from_a_hand_written_result():
  d = {"diff": -0.1, "ci_low": -0.2, "ci_high": 0.05}
  results = {"summary": {"grpo": {"seeds": 3, "l0 without routes": 0.875, "l0 with routes": 0.5,
                                  "l1 without routes": 0.25, "l0 - more_sft": d}},
             "against_realm_r1": {"grpo": {"l0 without routes": d}}}
  assert readme_tables.accuracy_table(results).splitlines()[2] == \
      "| control: SFT → GRPO | 3 | 0.875 | 0.500 | 0.250 |  |  | −0.100 (−0.200 .. +0.050) |  |"
  assert readme_tables.against_r1_table(results).splitlines()[2] == \
      "| control: SFT → GRPO | −0.100 (−0.200 .. +0.050) |  |  |"


@pytest.mark.parametrize("results", ["reproduce", "reproduce_bf16", "reproduce_bf16_sft3000",
                                     "reproduce_bf16_sft1500", "reproduce_bf16_level1"])
def test_readme_shows_the_committed_results(results):
  d = os.path.join(ROOT, "experiments", "results", results)
  with open(os.path.join(d, "results.json")) as f:
    r = json.load(f)
  with open(os.path.join(ROOT, "README.md")) as f:
    readme = f.read()
  assert readme_tables.accuracy_table(r) in readme
  assert readme_tables.against_r1_table(r) in readme
  for extra in ("rule_split.md", "group_signal.md"):  # the level-1 experiment's other tables
    if r["schedule"]["levels"][0] > 0:
      with open(os.path.join(d, extra)) as f:
        assert f.read() in readme, extra


@pytest.mark.parametrize("name", ["from_routes_l1", "from_routes_l1_rl180"])
def test_readme_shows_the_committed_route_start_tables(name):
  path = os.path.join(ROOT, "experiments", "results", "reproduce_bf16_level1", "variants",
                      f"table_{name}.md")
  with open(path) as f:
    table = f.read().split("\n\nQuestions per seed")[0]
  with open(os.path.join(ROOT, "README.md")) as f:
    assert table in f.read()
