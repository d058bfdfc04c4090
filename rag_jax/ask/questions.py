"""Questions for `python -m rag_jax.ask`: a file of them, and a dev set of questions whose
answer is known, with the scores of retrieval and answers on it."""

import json
import sys
from typing import Any, Dict, List, Sequence


def read_dev(path) -> List[Dict[str, str]]:
  """A dev set: JSONL of {"question", "title": the answer article[, "answer": a string the
  article's text holds]}; a malformed line is a ValueError naming it."""
  items = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        item = json.loads(line)
        if not isinstance(item["question"], str) or not isinstance(item["title"], str):
          raise TypeError
      except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path}: line {number}: expected {{\"question\": str, \"title\": "
                         f"str[, \"answer\": str]}}") from None
      items.append(item)
  if not items:
    raise ValueError(f"{path}: no questions")
  return items


def dev_scores(results: Sequence[Dict[str, Any]], dev: Sequence[Dict[str, str]]
               ) -> Dict[str, float]:
  """How often retrieval found the answer: "article@1" / "article@k" (the fraction of
  questions whose answer article is the top hit / among the k hits) and, over the questions
  with an "answer", "answer@1" / "answer@k" (a hit's text holds the answer, any case)."""
  def rate(found: List[bool]) -> float:
    return sum(found) / len(found) if found else float("nan")
  def norm(text: str) -> str:  # passages are split on whitespace and joined by one space
    return " ".join(text.lower().split())
  article = [[h["title"] == d["title"] for h in r["hits"]] for r, d in zip(results, dev)]
  answer = [[norm(d["answer"]) in norm(h["text"]) for h in r["hits"]]
            for r, d in zip(results, dev) if d.get("answer")]
  return {"article@1": rate([a[0] for a in article]), "article@k": rate([any(a) for a in article]),
          "answer@1": rate([a[0] for a in answer]), "answer@k": rate([any(a) for a in answer])}


def read_questions(path) -> List[str]:
  """The questions of a file ("-": standard input), one a line; blank lines are skipped."""
  if str(path) == "-":
    questions = [line.strip() for line in sys.stdin if line.strip()]
  else:
    with open(path, encoding="utf-8") as f:
      questions = [line.strip() for line in f if line.strip()]
  if not questions:
    raise ValueError(f"{'standard input' if str(path) == '-' else path}: no questions")
  return questions


def contains_answer(generated: str, gold: str) -> bool:
  """The generated answer holds the gold one (case and spacing aside)."""
  return " ".join(gold.lower().split()) in " ".join(generated.lower().split())
