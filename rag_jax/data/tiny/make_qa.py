"""Writes the tiny QA, abstractive-QA and Jeopardy tasks into rag_jax/data/tiny/qa (run once;
its output is committed).

    python -m rag_jax.data.tiny.make_qa [--out DIR]

The questions are about the made-up world of rag_jax/data/tiny/fever (which make_fever builds,
and whose passages.tsv the `:tiny` configs retrieve from): each of its 64 facts (16 articles x 4
relations) is asked once, split 40 train / 12 dev / 12 test by a fixed seed, and written in
each task's official format:

  biencoder-nq-{split}.json      DPR's retriever JSON (NQ): positive_ctxs name the gold article
  trivia-{split}.qa.csv          DPR's QA csv (TriviaQA): the answer and an alias with "the"
  webquestions-{split}.qa.csv    DPR's QA csv (WebQuestions)
  curatedtrec-{split}.qa.csv     DPR's QA csv (CuratedTrec): answers as regular expressions
  {train,dev}_v2.1.json          MS MARCO v2.1 columns; the fact's sentence is the well-formed
  eval_v2.1_public.json          answer; the eval (test) file has no answers, as the official
  jeopardy/{split}.source/target SearchQA's Jeopardy as seq2seq: the article's title -> a clue
  vocab.txt                      BERT's special tokens, "/" and `rag_jax.data.words` of every
                                 text here and of the passages: one vocabulary for every task,
                                 so that a model trained on one (NQ) starts another (WQ, CT)
"""

import argparse
import json
import pathlib
import random
import re

from rag_jax.data import tiny
from rag_jax.data import words
from rag_jax.data.tiny import make_fever

SEED = 0
SPLITS = {"train": 40, "dev": 12, "test": 12}
# (kind, relation index) -> the question; {s} the subject as texts name it.
QUESTIONS = {
    ("river", 0): "which town does the {s} flow through?",
    ("river", 1): "where does the {s} end?",
    ("river", 2): "what fish live in the {s}?",
    ("river", 3): "who was the {s} named after?",
    ("town", 0): "in which part of the land is {s}?",
    ("town", 1): "what is {s} known for?",
    ("town", 2): "who is the mayor of {s}?",
    ("town", 3): "what colour are the houses of {s}?",
    ("person", 0): "where was {s} born?",
    ("person", 1): "what does {s} work as?",
    ("person", 2): "which animal did {s} write a book about?",
    ("person", 3): "which instrument does {s} play?",
    ("animal", 0): "which river does the {s} live near?",
    ("animal", 1): "what does the {s} eat?",
    ("animal", 2): "what colour is the {s}?",
    ("animal", 3): "who first described the {s}?",
}


def _world():
  """make_fever's world, rebuilt from its seed: (articles, facts)."""
  return make_fever.build_world(random.Random(make_fever.SEED))


def _rows(articles, facts):
  """One row per fact: question, answer, the fact's sentence, its article, passage and clue."""
  passages = {title: [" ".join(p) for p in ps] for title, _, ps in articles}
  rows = []
  for title, kind, sentence_id, r, obj in facts:
    s = make_fever.mention(title)
    template = make_fever.FACTS[kind][r][2]
    sentence = template.format(s=s, o=obj)
    passage = next(p for p in passages[title] if sentence in p)
    clue = template.format(s="@", o=obj).replace("the @", "@").replace("@", f"this {kind}")
    rows.append({"question": QUESTIONS[kind, r].format(s=s), "answer": obj,
                 "sentence": sentence, "title": title, "passage": passage,
                 "clue": clue.rstrip(".")})
  return rows


def _check_passages(articles) -> None:
  """The world rebuilt here is the one tiny/fever/passages.tsv holds."""
  texts = [f'"{" ".join(p)}"' for _, _, ps in articles for p in ps]
  lines = tiny.PASSAGES.read_text(encoding="utf-8").splitlines()
  if [line.split("\t")[1] for line in lines[1:]] != texts:
    raise SystemExit(f"{tiny.PASSAGES} is not the world make_fever builds")


def _pattern(answer: str) -> str:
  """CuratedTrec-style: a person by surname with an optional first name, else an optional
  leading "the"."""
  parts = answer.split()
  if len(parts) == 2 and parts[0] in ("anna", "tom", "lisa", "paul"):
    return f"({parts[0]}\\s+)?{parts[1]}"
  return "(the\\s+)?" + r"\s+".join(re.escape(p) for p in parts)


def _qa_csv(path: pathlib.Path, rows, answers) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for row in rows:
      f.write(f"{row['question']}\t{answers(row)!r}\n")


def _msmarco(path: pathlib.Path, rows, first_id: int, labelled: bool) -> None:
  keys = [str(i) for i in range(len(rows))]
  data = {"passages": {k: [{"is_selected": 1, "passage_text": r["passage"],
                            "url": "https://example.org/" + r["title"].replace(" ", "_")}]
                       for k, r in zip(keys, rows)},
          "query": {k: r["question"] for k, r in zip(keys, rows)},
          "query_id": {k: first_id + i for i, k in enumerate(keys)},
          "query_type": {k: "ENTITY" for k in keys}}
  if labelled:
    data["answers"] = {k: [r["answer"]] for k, r in zip(keys, rows)}
    data["wellFormedAnswers"] = {k: [r["sentence"]] for k, r in zip(keys, rows)}
  path.write_text(json.dumps(data) + "\n", encoding="utf-8")


def main(out: pathlib.Path) -> None:
  articles, facts = _world()
  _check_passages(articles)
  rows = _rows(articles, facts)
  random.Random(SEED).shuffle(rows)
  splits, start = {}, 0
  for split, n in SPLITS.items():
    splits[split] = rows[start:start + n]
    start += n
  out.mkdir(parents=True, exist_ok=True)
  (out / "jeopardy").mkdir(exist_ok=True)
  texts = []
  for split, part in splits.items():
    nq = [{"dataset": "nq_tiny", "question": r["question"], "answers": [r["answer"]],
           "positive_ctxs": [{"title": r["title"], "text": r["passage"], "score": 1000,
                              "title_score": 1}],
           "negative_ctxs": [], "hard_negative_ctxs": []} for r in part]
    (out / f"biencoder-nq-{split}.json").write_text(json.dumps(nq, indent=4) + "\n",
                                                    encoding="utf-8")
    _qa_csv(out / f"trivia-{split}.qa.csv", part, lambda r: [r["answer"], "the " + r["answer"]])
    _qa_csv(out / f"webquestions-{split}.qa.csv", part, lambda r: [r["answer"]])
    _qa_csv(out / f"curatedtrec-{split}.qa.csv", part, lambda r: [_pattern(r["answer"])])
    name = {"train": "train_v2.1.json", "dev": "dev_v2.1.json",
            "test": "eval_v2.1_public.json"}[split]
    _msmarco(out / name, part, 1000 + 100 * list(SPLITS).index(split), split != "test")
    for suffix, key in (("source", "title"), ("target", "clue")):
      (out / "jeopardy" / f"{split}.{suffix}").write_text(
          "".join(r[key] + "\n" for r in part), encoding="utf-8")
    texts += [t for r in part for t in (r["question"], r["answer"], r["sentence"], r["clue"],
                                        r["title"], "the " + r["answer"])]
  texts += [f"{title} {' '.join(p)}" for title, _, ps in articles for p in ps]
  vocab = list(make_fever.SPECIAL_TOKENS) + words(texts + ["/"])
  (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, default=tiny.QA)
  main(parser.parse_args().out)
