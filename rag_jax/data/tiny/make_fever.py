"""Writes the tiny FEVER task into rag_jax/data/tiny/fever (run once; its output is committed).

    python -m rag_jax.data.tiny.make_fever [--out DIR]

A made-up world of 16 articles (4 rivers, 4 towns, 4 people, 4 animals), each with four facts
that link it to other articles or to a small pool of words. Every fact uses each object of its
pool once (a bijection), so a REFUTES claim, which swaps the object for another of the same
kind, is always false of its subject but true of another one: the claim cannot be refuted by
its words alone. Texts are lowercase words and periods, so a word-level vocabulary covers them.

Files (official formats):
  passages.tsv    DPR psgs_w100: header `id<TAB>text<TAB>title`, text in double quotes
  train.jsonl     48 claims, official FEVER: 16 SUPPORTS, 16 REFUTES, 16 NOT ENOUGH INFO
  dev.jsonl       16 claims: 6 SUPPORTS, 5 REFUTES, 5 NOT ENOUGH INFO (facts unseen in train)
  dev_kilt.jsonl  dev's SUPPORTS and REFUTES claims in KILT's format
  vocab.txt       a WordPiece vocabulary: BERT's special tokens, "/" (RAG's separators in
                  `title / text // question`) and `rag_jax.data.words` of all the texts,
                  titles and default label words
"""

import argparse
import json
import pathlib
import random

from rag_jax.data import fever
from rag_jax.data import tiny
from rag_jax.data import words

SEED = 0
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

KINDS = {
    "river": ("Alpha River", "Bravo River", "Cedar River", "Dune River"),
    "town": ("Stone Harbor", "Green Hill", "Oak Bay", "Iron Gate"),
    "person": ("Anna Berg", "Tom Reed", "Lisa Moss", "Paul Frost"),
    "animal": ("Lark (bird)", "Snow Hare", "Marsh Toad", "Blue Heron"),
}
POOLS = {
    "sea": ("north sea", "grey sea", "warm sea", "salt sea"),
    "fish": ("trout", "salmon", "pike", "eels"),
    "region": ("north", "south", "east", "west"),
    "product": ("bread", "wine", "cheese", "glass"),
    "colour": ("brown", "white", "red", "green"),
    "job": ("painter", "singer", "doctor", "farmer"),
    "instrument": ("drum", "flute", "harp", "horn"),
    "food": ("seeds", "insects", "grass", "berries"),
}
# kind -> four (relation, object kind or pool, sentence); {s} the subject, {o} the object.
FACTS = {
    "river": (("flows", "town", "the {s} flows through {o}."),
              ("ends", "sea", "the {s} ends in the {o}."),
              ("fish", "fish", "the {s} is home to many {o}."),
              ("named", "person", "the {s} was named after {o}.")),
    "town": (("region", "region", "{s} is a town in the {o}."),
             ("known", "product", "{s} is known for its {o}."),
             ("mayor", "person", "the mayor of {s} is {o}."),
             ("houses", "colour", "the houses of {s} are painted {o}.")),
    "person": (("born", "town", "{s} was born in {o}."),
               ("job", "job", "{s} works as a {o}."),
               ("book", "animal", "{s} wrote a book about the {o}."),
               ("plays", "instrument", "{s} plays the {o}.")),
    "animal": (("lives", "river", "the {s} lives near the {o}."),
               ("eats", "food", "the {s} eats {o}."),
               ("colour", "colour", "the {s} is mostly {o}."),
               ("described", "person", "the {s} was first described by {o}.")),
}
INTROS = {
    "river": "the {s} is a long river in a quiet land of hills and woods.",
    "town": "{s} is an old town with narrow streets and a busy square.",
    "person": "{s} is known to many people across the land.",
    "animal": "the {s} is a small animal that people often see in the spring.",
}
FILLERS = {
    "river": ("in the summer many boats travel along its water.",
              "its water is clear and cold for most of the year.",
              "old stories tell of a great flood long ago.",
              "people like to walk along its banks in the evening."),
    "town": ("many visitors come to walk its streets in the summer.",
             "the town has a small school and an old church.",
             "people there are known for their songs.",
             "a road through the hills links it to other towns."),
    "person": ("{s} lived a quiet life and had many friends.",
               "{s} spent many years travelling across the land.",
               "the work of {s} is still known today.",
               "{s} often spoke at the school of the town."),
    "animal": ("it is often seen in the early morning.",
               "it makes a loud sound at night.",
               "young ones stay with their mother for a few weeks.",
               "it hides from people when it is cold."),
}
# Relations stated for no article: claims with them are NOT ENOUGH INFO.
UNSTATED = {
    "river": ("the {s} floods {o} every spring.", "town"),
    "town": ("{s} holds a {o} fair every summer.", "product"),
    "person": ("{s} is a friend of {o}.", "person"),
    "animal": ("the {s} sleeps in the hills near {o}.", "town"),
}


def mention(title: str) -> str:
  """How texts name an article: lowercase, without the disambiguation in brackets."""
  return title.split(" (")[0].lower()


def fever_title(title: str) -> str:
  """A title as FEVER's Wikipedia dump writes it: `Lark (bird)` -> `Lark_-LRB-bird-RRB-`."""
  return title.replace(" ", "_").replace("(", "-LRB-").replace(")", "-RRB-")


def objects(kind: str):
  return [mention(t) for t in KINDS[kind]] if kind in KINDS else list(POOLS[kind])


def build_world(rng: random.Random):
  """Articles (title, kind, sentences) and facts (title, sentence id, relation index, object)."""
  # Each relation maps the 4 subjects of a kind onto its 4 objects one to one; a relation to
  # the subject's own kind (none here) would need a derangement.
  assignment = {}
  for kind, relations in FACTS.items():
    for r, (_, target, _) in enumerate(relations):
      pool = objects(target)
      rng.shuffle(pool)
      assignment[kind, r] = pool
  articles, facts = [], []
  for kind, titles in KINDS.items():
    for i, title in enumerate(titles):
      s = mention(title)
      fact_sentences = [sentence.format(s=s, o=assignment[kind, r][i])
                        for r, (_, _, sentence) in enumerate(FACTS[kind])]
      fillers = [f.format(s=s) for f in FILLERS[kind]]
      rng.shuffle(fillers)
      passages = [[INTROS[kind].format(s=s), fact_sentences[0], fact_sentences[1]],
                  [fact_sentences[2], fillers[0], fillers[1]],
                  [fact_sentences[3], fillers[2], fillers[3]]]
      sentences = [x for p in passages for x in p]
      articles.append((title, kind, passages))
      for r, sentence in enumerate(fact_sentences):
        facts.append((title, kind, sentences.index(sentence), r, assignment[kind, r][i]))
  return articles, facts


def claims(rng: random.Random, facts, counts):
  """(claim, label, evidence pages and sentences) per split, `counts` = split -> (S, R, N)."""
  facts = list(facts)
  rng.shuffle(facts)
  out = {}
  for split, (n_sup, n_ref, n_nei) in counts.items():
    rows = []
    for n, label in ((n_sup, fever.SUPPORTS), (n_ref, fever.REFUTES)):
      for _ in range(n):
        title, kind, sentence_id, r, obj = facts.pop()
        _, target, template = FACTS[kind][r]
        if label == fever.REFUTES:
          obj = rng.choice([o for o in objects(target) if o != obj])
        rows.append((template.format(s=mention(title), o=obj), label, title, sentence_id))
    seen = set()
    while len(seen) < n_nei:
      kind = rng.choice(sorted(KINDS))
      title = rng.choice(KINDS[kind])
      template, target = UNSTATED[kind]
      obj = rng.choice([o for o in objects(target) if o != mention(title)])
      claim = template.format(s=mention(title), o=obj)
      if claim not in seen and all(claim not in [c[0] for c in v] for v in out.values()):
        seen.add(claim)
        rows.append((claim, fever.NOT_ENOUGH_INFO, None, None))
    rng.shuffle(rows)
    out[split] = rows
  return out


def official_record(rng: random.Random, claim_id: int, claim, label, title, sentence_id):
  if title is None:  # as FEVER writes NOT ENOUGH INFO: one annotation, no sentence
    evidence = [[[rng.randrange(100000, 300000), None, None, None]]]
  else:
    # Some claims have a second annotator's evidence set on the same page, as many in FEVER do.
    evidence = [[[rng.randrange(100000, 300000), rng.randrange(100000, 300000),
                  fever_title(title), sentence_id]] for _ in range(rng.choice((1, 1, 2)))]
  # FEVER's key order.
  return {"id": claim_id, "verifiable": "NOT VERIFIABLE" if title is None else "VERIFIABLE",
          "label": label, "claim": claim, "evidence": evidence}


def kilt_record(claim_id: int, claim, label, title, sentence_id, articles):
  index = [a[0] for a in articles].index(title)
  passages = articles[index][2]
  # KILT's paragraph 0 is the title; passage p is paragraph p + 1.
  paragraph = 1 + next(p for p in range(len(passages))
                       if sentence_id < sum(len(x) for x in passages[:p + 1]))
  provenance = {"wikipedia_id": str(1000 + index), "title": title,
                "section": "Section::::Abstract.", "start_paragraph_id": paragraph,
                "start_character": 0, "end_paragraph_id": paragraph,
                "end_character": len(" ".join(passages[paragraph - 1])), "bleu_score": 1.0}
  return {"id": str(claim_id), "input": claim,
          "output": [{"answer": label, "provenance": [provenance]}]}


def write_jsonl(path: pathlib.Path, records) -> None:
  with open(path, "w", encoding="utf-8", newline="\n") as f:
    for record in records:
      f.write(json.dumps(record) + "\n")


def main(out: pathlib.Path) -> None:
  rng = random.Random(SEED)
  articles, facts = build_world(rng)
  out.mkdir(parents=True, exist_ok=True)
  texts = []
  with open(out / "passages.tsv", "w", encoding="utf-8", newline="\n") as f:
    f.write("id\ttext\ttitle\n")
    row = 0
    for title, _, passages in articles:
      for sentences in passages:
        row += 1
        text = " ".join(sentences)
        f.write(f'{row}\t"{text}"\t{title}\n')  # DPR quotes every text
        texts += [title, text]

  split_claims = claims(rng, facts, {"train": (16, 16, 16), "dev": (6, 5, 5)})
  ids = rng.sample(range(10000, 100000), sum(len(v) for v in split_claims.values()))
  for split, rows in split_claims.items():
    records = [official_record(rng, ids.pop(), *row) for row in rows]
    write_jsonl(out / f"{split}.jsonl", records)
    texts += [r["claim"] for r in records]
    if split == "dev":
      write_jsonl(out / "dev_kilt.jsonl", [
          kilt_record(r["id"], *row, articles)
          for r, row in zip(records, rows) if row[1] != fever.NOT_ENOUGH_INFO])

  vocab = list(SPECIAL_TOKENS) + words(texts + ["/"] + list(fever.DEFAULT_LABEL_WORDS.values()))
  (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", type=pathlib.Path, default=tiny.FEVER)
  main(parser.parse_args().out)
