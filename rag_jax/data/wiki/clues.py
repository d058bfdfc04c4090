"""Jeopardy clues from the embedded Wikipedia, written in the seq2seq layout (reader kind
"jeopardy": `{split}.source` the answers, `{split}.target` the clues).

Jeopardy (source: the title; target: the clue): the first sentence "{Title} is {predicate}."
becomes "This {description} is {predicate}." (a description of at most 8 words, else a noun
for the topic), kept only when no word of the title (3 letters or more) is in the clue.
Counts: train 4,232, dev 548, test 521.
"""

import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rag_jax.data.wiki import swap
from rag_jax.data.wiki import text

NOUNS = {
    "People": "person", "Geography": "place", "History": "subject of history",
    "Arts": "work or form of art", "Biology and health sciences": "subject of biology",
    "Physical sciences": "subject of science", "Technology": "technology",
    "Mathematics": "mathematical subject", "Philosophy and religion": "subject of belief",
    "Society and social sciences": "subject of society", "Everyday life": "part of everyday life",
}
DEFAULT_NOUN = "subject"
_STOPWORDS = {"the", "and", "for", "with", "from", "into", "of", "in", "on", "at", "by"}

# (article, clue, its prefix "This {noun} is ", the predicate)
Clue = Tuple[text.Article, str, str, str]


def clue(wiki: text.Wiki, article: text.Article) -> Optional[Tuple[str, str, str]]:
  """(clue, its prefix "This {noun} is ", the predicate) from the first sentence."""
  lead = text.sentences(article.text)
  first = text.first_sentence(article, lead[0]) if lead else None
  if first is None:
    return None
  desc = wiki.description(article)
  nouns = []
  if desc and len(desc.split()) <= 8:
    nouns.append(wiki.lower_first(desc))
  nouns.append(NOUNS.get(article.topic, DEFAULT_NOUN))
  title_words = [w for w in re.findall(r"\w+", article.title)
                 if len(w) >= 3 and w.lower() not in _STOPWORDS]
  verb = {"are": "is", "were": "was"}.get(first.verb, first.verb)
  for noun in nouns:
    this = "this" if first.intro else "This"
    prefix = f"{first.intro}{this} {noun} {verb} "
    found = prefix + first.predicate
    if not any(text.word_in(w, found) for w in title_words):
      return found, prefix, first.predicate
  return None


def derive(wiki: text.Wiki) -> Dict[str, List[Clue]]:
  """split -> the clue of each kept article that has one, in the asset's order."""
  out = {split: [] for split in text.SPLITS}
  for article in wiki.kept:
    found = clue(wiki, article)
    if found is not None:
      out[article.split].append((article, *found))
  return out


def turns_on(wiki: text.Wiki, test: Sequence[Clue]) -> Iterator[swap.Use]:
  """The values the test clues turn on: each value of a clue's predicate."""
  for article, _, _, predicate in test:
    for _, value, _ in wiki.values.find(predicate):
      yield article, value, predicate


def pairs(wiki: text.Wiki, clues: Dict[str, List[Clue]],
          swaps: swap.Swaps) -> Dict[str, List[Tuple[str, str]]]:
  """split (and swap.SWAPPED) -> (source, target): the title and its clue; a swapped clue
  with its predicate's swapped values."""
  out = {split: [] for split in (*text.SPLITS, swap.SWAPPED)}
  for split in text.SPLITS:
    for article, found, prefix, predicate in clues[split]:
      out[split].append((article.title, found))
      if split == "test":
        new = prefix + swap.swapped_sentence(wiki, article, predicate, swaps)
        if new != found:
          out[swap.SWAPPED].append((article.title, new))
  return out
