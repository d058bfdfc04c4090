"""The hot swap: test facts changed in a second passages file, and the test examples that turn
on them with their new golds, so that a trained model can be asked to follow an index it was
not trained on.

Hot swap: facts (article, value) of test articles, in hash order, whose value occurs once in
the article's text and whose sentence lies in one passage, and which a test example of some
task turns on, until each task has 60 or there are no more: a year, number or country answer
(QA); the value in a SUPPORTS sentence or the value a REFUTES claim replaced (FEVER); a value in
a clue (Jeopardy). In `passages_swapped.tsv` that value becomes `Values.swap`'s
(rag_jax.data.wiki.text). Each `test_swapped` file holds every test example of the task that
turns on a swapped fact, with its new gold: the new value (QA), the flipped label (FEVER:
SUPPORTS -> REFUTES and the other way), the clue with the new value (Jeopardy). A fact is not
swapped when its value is in a test question of its article (that question would no longer
match its passage). The test split runs out before 60: counts QA 23 (year 11, country 4,
number 8), FEVER 49 (37 REFUTES -> SUPPORTS, 12 SUPPORTS -> REFUTES), Jeopardy 42; 93
passages change.
"""

import collections
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from rag_jax.data.wiki import text

SWAPPED = "test_swapped"  # the split of the swapped test examples
SWAPS_PER_TASK = 60

# (article, value, sentence): a value a test example turns on, in the sentence it comes from.
Use = Tuple[text.Article, str, str]
Swaps = Dict[Tuple[str, str], str]  # (title, value) -> the new value
Row = Tuple[str, str, str]          # a passage: (id, text, title)


def choose(wiki: text.Wiki, uses: Mapping[str, Iterable[Use]],
           asked: Mapping[str, Sequence[str]]) -> Swaps:
  """The facts to swap (see the module docstring).

  Args:
    wiki: the articles.
    uses: task name -> the values its test examples turn on; each task gets up to
      `SWAPS_PER_TASK` swapped examples.
    asked: title -> the test questions about that article, whose values must not change.

  Returns:
    (title, value) -> its new value.
  """

  def eligible(article: text.Article, value: str, sentence: str) -> bool:
    return (article.text.count(value) == 1 and text.count(article.text, value) == 1
            and wiki.passage_of(article, sentence) is not None
            and not any(value in q for q in asked.get(article.title, ())))

  tasks = list(uses)
  counted = collections.defaultdict(collections.Counter)  # (title, value) -> task -> examples
  for task, found in uses.items():
    for article, value, sentence in found:
      if eligible(article, value, sentence):
        counted[article.title, value][task] += 1

  kinds = {}
  for article in wiki.articles:
    if article.split == "test" and not article.held_out:
      for kind, value, _ in wiki.values.find(article.text):
        kinds[article.title, value] = kind
  counts, swaps = collections.Counter(), {}
  for key in sorted(counted, key=lambda k: text.hash_of("swap", *k)):
    if all(counts[task] >= SWAPS_PER_TASK for task in tasks):
      break
    if not any(counts[task] < SWAPS_PER_TASK for task in counted[key]):
      continue
    new = wiki.values.swap(wiki.by_title[key[0]], kinds[key], key[1])
    if new is None:
      continue
    swaps[key] = new
    counts.update(counted[key])
  return swaps


def swapped_sentence(wiki: text.Wiki, article: text.Article, sentence: str,
                     swaps: Swaps) -> str:
  """`sentence` of `article` with each swapped value replaced by its new one."""
  for _, value, _ in wiki.values.find(sentence):
    if (article.title, value) in swaps:
      sentence = text.replace_once(sentence, value, swaps[article.title, value])
  return sentence


def passages(wiki: text.Wiki, swaps: Swaps) -> Tuple[List[Row], List[Row]]:
  """The rows of `passages.tsv` and of `passages_swapped.tsv`: the same ids, in the same
  order, the second with the swapped values changed."""
  before, after = [], []
  for article in wiki.kept:
    facts = [(value, new) for (title, value), new in swaps.items() if title == article.title]
    for pid, passage in wiki.passages[article.title]:
      before.append((pid, passage, article.title))
      for value, new in facts:
        if text.count(passage, value):
          passage = text.replace_once(passage, value, new)
      after.append((pid, passage, article.title))
  return before, after
