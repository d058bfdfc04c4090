"""FEVER claims from the embedded Wikipedia, written as FEVER's official JSONL (reader kind
"fever").

FEVER (labels balanced in each split: each label is cut, in hash order, to the rarest's count,
and the file interleaves them, SUPPORTS, REFUTES, NOT ENOUGH INFO in turn, so that its first 3m
claims are balanced too; evidence names the article's page, so `gold_titles` is its title):
  * SUPPORTS: a sentence of the lead, as it is, that names the subject and has 6 to 50 words:
    one per article, chosen by hash.
  * REFUTES: such a sentence that holds a value, with one value (chosen by hash) replaced by
    `Values.swap`: one per article.
  * NOT ENOUGH INFO: up to 3 such sentences of a held-out article, as they are.
  Counts (SUPPORTS = REFUTES = NOT ENOUGH INFO, each): train 596, dev 111, test 74; NOT ENOUGH
  INFO (about 5% of articles) is the rarest.
"""

import collections
import dataclasses
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rag_jax.data import fever
from rag_jax.data.wiki import swap
from rag_jax.data.wiki import text

MAX_NEI_PER_ARTICLE = 3


@dataclasses.dataclass(frozen=True)
class Claim:
  """A claim about one article, before it is written.

  Attributes:
    label: fever.SUPPORTS, REFUTES or NOT_ENOUGH_INFO.
    article: the article it is about.
    claim: its text.
    sentence: the lead's sentence it was made from.
    fact: for REFUTES, the value the claim replaced; else None.
  """
  label: str
  article: text.Article
  claim: str
  sentence: str
  fact: Optional[text.Fact] = None


def claim_sentences(article: text.Article) -> List[str]:
  """The lead's sentences a claim can be: naming the subject, 6 to 50 words."""
  return [s for s in text.sentences(article.text)
          if text.names_subject(article, s) and 6 <= len(s.split()) <= 50]


def supports(article: text.Article) -> Optional[str]:
  candidates = claim_sentences(article)
  return min(candidates, key=lambda s: text.hash_of("S", article.title, s)) if candidates else None


def refutes(wiki: text.Wiki, article: text.Article) -> Optional[Tuple[str, str, text.Fact]]:
  """(claim, sentence, the fact it changes)."""
  options = [(s, kind, value, offset) for s in claim_sentences(article)
             for kind, value, offset in wiki.values.find(s)]
  for s, kind, value, offset in sorted(options,
                                       key=lambda o: text.hash_of("R", article.title, *o)):
    new = wiki.values.swap(article, kind, value)
    if new is not None:
      return (s[:offset] + new + s[offset + len(value):], s,
              text.Fact(article.title, kind, value, s))
  return None


def derive(wiki: text.Wiki) -> Dict[str, List[Claim]]:
  """split -> its claims, balanced by label and interleaved (the module docstring)."""
  by_label = {split: collections.defaultdict(list) for split in text.SPLITS}
  for article in wiki.articles:
    found = by_label[article.split]
    if article.held_out:
      candidates = sorted(claim_sentences(article),
                          key=lambda s, a=article: text.hash_of("N", a.title, s))
      for s in candidates[:MAX_NEI_PER_ARTICLE]:
        found[fever.NOT_ENOUGH_INFO].append(Claim(fever.NOT_ENOUGH_INFO, article, s, s))
      continue
    s = supports(article)
    if s is not None:
      found[fever.SUPPORTS].append(Claim(fever.SUPPORTS, article, s, s))
    r = refutes(wiki, article)
    if r is not None:
      found[fever.REFUTES].append(Claim(fever.REFUTES, article, *r))
  out = {}
  for split in text.SPLITS:
    n = min(len(by_label[split][label]) for label in fever.LABELS)
    ranked = [sorted(by_label[split][label],
                     key=lambda c: text.hash_of(c.label, c.article.title, c.claim))[:n]
              for label in fever.LABELS]
    # Interleaved (one of each label in turn), so that the first 3m claims of a file are a
    # balanced subset: what `data.max_eval_examples` takes.
    out[split] = [c for triple in zip(*ranked) for c in triple]
  return out


def turns_on(wiki: text.Wiki, test: Sequence[Claim]) -> Iterator[swap.Use]:
  """The values the test claims turn on: each value of a SUPPORTS sentence, the value a
  REFUTES claim replaced."""
  for c in test:
    if c.label == fever.SUPPORTS:
      for _, value, _ in wiki.values.find(c.sentence):
        yield c.article, value, c.sentence
    elif c.label == fever.REFUTES:
      yield c.article, c.fact.value, c.sentence


def records(wiki: text.Wiki, claims: Dict[str, List[Claim]],
            swaps: swap.Swaps) -> Dict[str, List[dict]]:
  """split (and swap.SWAPPED) -> FEVER's official records; ids count up over the splits."""
  out = {split: [] for split in (*text.SPLITS, swap.SWAPPED)}
  claim_id = 0
  for split in text.SPLITS:
    for c in claims[split]:
      claim_id += 1
      record = {"id": claim_id, "label": c.label, "claim": c.claim}
      if c.label == fever.NOT_ENOUGH_INFO:
        record["evidence"] = [[[claim_id, None, None, None]]]
      else:
        index = text.sentences(c.article.text).index(c.sentence)
        record["evidence"] = [[[claim_id, claim_id, fever.page_name(c.article.title), index]]]
      out[split].append(record)
      if split == "test" and c.label != fever.NOT_ENOUGH_INFO:
        new_sentence = swap.swapped_sentence(wiki, c.article, c.sentence, swaps)
        new_label = fever.SUPPORTS if c.claim == new_sentence else fever.REFUTES
        if new_label != c.label:
          out[swap.SWAPPED].append({**record, "label": new_label})
  return out
