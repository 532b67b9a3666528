r"""Final-answer extraction and answer equivalence (pure: strings in, values out).

`extract_answer(text)` takes the first rule that matches, in this order:
  1. the last `<answer>...</answer>` block (stripped; an empty block is no answer);
  2. the last `\boxed{...}` (nested braces allowed);
  3. the last `#### X` (the rest of that line);
  4. the last line of the form `Answer: X` / `Final answer: X` (the domain
     routes end with such a line);
  5. the last number in the text (sign, thousands separators, decimals, a
     fraction `a/b` and a trailing `%` included; digits glued to letters such as
     the rule id `R2` are not numbers).

`is_equivalent(predicted, gold)`: when both sides read as numbers
(`normalize_number`), they are compared as numbers, otherwise as normalised text.
  - accepted number forms: integers, decimals, `.5`, `1e3`, fractions `3/4`,
    `\frac{3}{4}`, thousands separators `1,234` (groups of exactly three digits;
    `1,5` is not a number), a leading `+`/`-`, a currency sign `$ € £ ¥` before
    the number (`-$12`, `$-12`), a trailing `%`, and trailing unit words, which
    are dropped, not converted (`12 kg` == `12` == `12 mg`), a leading
    `x = ` is dropped;
  - percent rule: a side written with `%` matches when either its number as
    written or that number / 100 matches the other side, so `"12%"` equals
    `"12"` and `"0.12"`, while `"12"` does not equal `"0.12"`;
  - tolerance: when both values are whole numbers they must be exactly equal
    (so 1000001 != 1000000 at any size); otherwise
    `|p - g| <= max(rel_tol * max(|p|, |g|), abs_tol)`;
  - text: Unicode NFKC, case-folded, every punctuation character replaced by a
    space, whitespace collapsed (`"Yes."` == `"yes"`); a number never equals a
    non-number and an empty prediction never matches.

`is_correct(text, gold)` extracts the answer from a completion and compares it with the
gold: the one helper every scorer (rewards, evaluation, RFT filtering) calls.

`score_batch(texts, golds)` extracts then compares, returning `float32[N]` of
0/1 (a text with no extractable answer scores 0).
"""

from __future__ import annotations

import math
import re
import unicodedata
from fractions import Fraction

import numpy as np

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_HASHES = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_LINE = re.compile(
    r"^[ \t]*(?:final[ \t]+)?answer[ \t]*[:：][ \t]*(.*?)[ \t]*$", re.IGNORECASE | re.MULTILINE
)
_LAST_NUMBER = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:/\d+)?%?")

_INT = r"(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)"
_NUMBER = re.compile(
    r"^(?P<sign1>[-+])?\s*(?P<cur>[$€£¥])?\s*(?P<sign2>[-+])?\s*"  # -$-
    r"(?:\\d?frac\{\s*(?P<fn>\d+)\s*\}\{\s*(?P<fd>\d+)\s*\}"  # \frac{3}{4}
    r"|(?P<num>\d+)\s*/\s*(?P<den>\d+)"  # 3/4
    rf"|(?P<dec>{_INT}(?:\.\d*)?|\.\d+)(?P<exp>[eE][-+]?\d+)?)"  # 1,234.5e3
    r"\s*(?P<pct>%)?\s*(?P<cur2>[$€£¥])?\s*(?P<unit>[^\W\d_][^\d]*)?$"  # % € kg
)
_ASSIGN_PREFIX = re.compile(r"^[A-Za-z_]\w*\s*=\s*(?=\S)")
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf)\{([^{}]*)\}")


def _last_boxed(text: str) -> str | None:
  r"""Content of the last `\boxed{...}`, matching nested braces; None if absent or unclosed."""
  start = text.rfind("\\boxed{")
  while start != -1:
    i = start + len("\\boxed{")
    depth = 1
    while i < len(text) and depth:
      depth += {"{": 1, "}": -1}.get(text[i], 0)
      i += 1
    if depth == 0:
      return text[start + len("\\boxed{") : i - 1].strip()
    start = text.rfind("\\boxed{", 0, start)
  return None


def extract_answer(text: str) -> str | None:
  """The final answer written in `text`, or None (see the module docstring for the order)."""
  if not isinstance(text, str):
    raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
  tags = _ANSWER_TAG.findall(text)
  if tags:
    content = tags[-1].strip()
    return content or None
  boxed = _last_boxed(text)
  if boxed:
    return boxed
  hashes = [h.strip() for h in _HASHES.findall(text)]
  if hashes and hashes[-1]:
    return hashes[-1]
  lines = [a for a in _ANSWER_LINE.findall(text) if a]
  if lines:
    return lines[-1]
  numbers = _LAST_NUMBER.findall(text)
  return numbers[-1] if numbers else None


def _clean(s: str) -> str:
  s = unicodedata.normalize("NFKC", s).strip()
  s = (
      s.replace("−", "-")
      .replace("\\$", "$")
      .replace("\\%", "%")
      .replace("\\!", "")
      .replace("\\,", "")
  )
  s = _LATEX_TEXT.sub(r"\1", s)
  return s.strip()


def _parse_number(s: str) -> tuple[Fraction, bool] | None:
  """(exact value as written, written with %) or None when `s` is not a number."""
  s = _ASSIGN_PREFIX.sub("", _clean(s))
  m = _NUMBER.match(s)
  if m is None or (m["sign1"] and m["sign2"]) or (m["cur"] and m["cur2"]):
    return None
  if m["fn"] is not None:
    num, den = int(m["fn"]), int(m["fd"])
    if den == 0:
      return None
    value = Fraction(num, den)
  elif m["num"] is not None:
    num, den = int(m["num"]), int(m["den"])
    if den == 0:
      return None
    value = Fraction(num, den)
  else:
    dec = m["dec"].replace(",", "")
    value = Fraction(dec + "0" if dec.endswith(".") else dec)
    if m["exp"]:
      exponent = int(m["exp"][1:])
      if abs(exponent) > 400:
        return None
      value *= Fraction(10) ** exponent
  if (m["sign1"] or m["sign2"]) == "-":
    value = -value
  return value, m["pct"] is not None


def normalize_number(s: str) -> float | None:
  """The number written in `s` as a float (a percent stays as written: "12%" -> 12.0), or None."""
  parsed = _parse_number(s)
  return None if parsed is None else float(parsed[0])


def _normalize_text(s: str) -> str:
  s = unicodedata.normalize("NFKC", s).casefold()
  s = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in s)
  return " ".join(s.split())


def _close(a: Fraction, b: Fraction, rel_tol: float, abs_tol: float) -> bool:
  if a.denominator == 1 and b.denominator == 1:
    return a == b
  return math.isclose(float(a), float(b), rel_tol=rel_tol, abs_tol=abs_tol)


def is_equivalent(predicted: str, gold: str, rel_tol: float = 1e-6, abs_tol: float = 1e-6) -> bool:
  """True when `predicted` states the same answer as `gold` (rules in the module docstring)."""
  if predicted is None:
    return False
  p, g = _parse_number(predicted), _parse_number(gold)
  if p is not None and g is not None:
    p_values = (p[0], p[0] / 100) if p[1] else (p[0],)
    g_values = (g[0], g[0] / 100) if g[1] else (g[0],)
    return any(_close(a, b, rel_tol, abs_tol) for a in p_values for b in g_values)
  if p is not None or g is not None:
    return False
  p_text = _normalize_text(predicted)
  return bool(p_text) and p_text == _normalize_text(gold)


def is_correct(text: str, gold: str) -> bool:
  """True when the answer extracted from completion `text` is equivalent to `gold`."""
  answer = extract_answer(text)
  return answer is not None and is_equivalent(answer, gold)


def score_batch(predicted_texts: list[str], golds: list[str]) -> np.ndarray:
  """`float32[N]`: 1.0 where the answer extracted from text i is equivalent to golds[i]."""
  if len(predicted_texts) != len(golds):
    raise ValueError(f"score_batch: {len(predicted_texts)} texts but {len(golds)} gold answers")
  scores = np.zeros(len(golds), dtype=np.float32)
  for i, (text, gold) in enumerate(zip(predicted_texts, golds)):
    scores[i] = float(is_correct(text, gold))
  return scores
