"""Result tables as Markdown: one helper for `realm-jax eval` and sweep summaries.

A cell that is not a string is formatted here: floats with 4 significant
digits, None as an empty cell, anything else with `str`. `baseline_rows` turns
trivial-baseline accuracies (`evaluation.baselines`) into rows beside a model's.
"""

from __future__ import annotations

from typing import Any, Sequence


def cell(value: Any) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return "" if value is None else str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub-flavoured Markdown table: the header, a rule, one line per row."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def baseline_rows(baselines: dict[str, dict[str, float]], n_cols: int) -> list[list[Any]]:
  """One row per (setting, baseline): "baseline: NAME", the setting, its accuracy (3 decimals),
  then empty cells up to `n_cols`; `baselines[setting][name]` is an accuracy."""
  return [[f"baseline: {name}", setting, f"{acc:.3f}"] + [""] * (n_cols - 3)
          for setting, accs in baselines.items() for name, acc in accs.items()]
