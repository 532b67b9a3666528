"""Result tables as Markdown: one helper for `realm-jax eval` and sweep summaries.

A cell that is not a string is formatted here: floats with 4 significant
digits, None as an empty cell, anything else with `str`.
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
