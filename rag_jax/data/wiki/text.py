"""The embedded Wikipedia as the task templates read it (`rag_jax.assets.wiki_summaries`,
10,033 vital articles: title, lead, description, topic): articles and their splits, sentences,
the values a claim or question can turn on, first sentences, and the passages.

Articles and splits. An article's split comes from the sha1 of its title (the first 8 hex
digits mod 10: 0 test, 1 dev, the rest train), and so does whether it is held out of the
corpus (the next 8 mod 20 == 0, about 5%). Every example is about one article and lands in
that article's split, so no test article was trained on. Held-out articles are in no passages
file; they give only FEVER's NOT ENOUGH INFO claims.

Sentences, values, swaps. A lead is split into sentences at `.`/`!`/`?` before a capital
(not after an abbreviation or an initial). A sentence "names the subject" when it holds the
title (its parenthesised part dropped, case-insensitively) or, for People, the surname. The
values a claim or question can turn on are years (1000-2029), other numbers (`32`, `15,693`)
and countries (the Geography articles described as a country). `Values.swap(article, kind,
value)` is the value of the same kind that replaces one: walking a sorted pool of the values
of that kind in articles of the same topic, from a position given by a hash of (title, value),
the first that differs, does not occur in the article's text and could pass for it (a year
within 100 years, a number with as many digits).

Passages: each kept article's lead, split by `rag_jax.index.corpus.chunk_words` (100 words,
as `read_jsonl` splits articles), id `{n}-{chunk}` with n the article's 1-based position in
`wiki_summaries()` (the ids `--articles asset:wiki-summaries-en` gives). 9,541 articles,
11,735 passages.
"""

import collections
import dataclasses
import functools
import hashlib
import re
from typing import Dict, List, Optional, Sequence, Tuple

from rag_jax import assets
from rag_jax.index import corpus

ASSET = "wiki-summaries-en"
SPLITS = ("train", "dev", "test")

YEAR, NUMBER, COUNTRY = "year", "number", "country"
YEAR_PATTERN = r"(?<![\w,.])(?:1\d{3}|20[0-2]\d)(?![\w]|[,.]\d)"
NUMBER_PATTERN = r"(?<![\w,.–-])(?:\d{1,3}(?:,\d{3})+|\d+)(?![\w%–-]|[,.]\d)"
# Country names that are also common words, people or other places.
_AMBIGUOUS_COUNTRIES = {"Georgia", "Jordan", "Chad", "Turkey", "Guinea", "Dominica", "Grenada"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "c", "ca", "no", "mt", "ft",
                  "gen", "lt", "col", "u.s", "u.k", "e.g", "i.e", "etc", "approx", "fl", "lit"}
_SENTENCE_END = re.compile(r"[.!?][\"”’)]?\s+(?=[\"“(]?[A-Z])")
COPULA = re.compile(r"\s(is|was|are|were)\s")
_INTRO = re.compile(r"^(?:In|Within|According to) [^,]{1,60}, ")
_PRONOUNS = ("It", "He", "She", "They")


@dataclasses.dataclass(frozen=True)
class Article:
  """One article with what the templates use.

  Attributes:
    number: 1-based position in `wiki_summaries()`, the first part of its passages' ids.
    title, text, description, topic: the asset's.
    split: "train", "dev" or "test".
    held_out: in no passages file.
  """
  number: int
  title: str
  text: str
  description: str
  topic: str
  split: str
  held_out: bool

  @property
  def core(self) -> str:
    """The title without a parenthesised qualifier: "Apology (Plato)" -> "Apology"."""
    return re.sub(r"\s*\([^)]*\)$", "", self.title)


def hash_of(*parts: object) -> int:
  """A stable order key (sha1 of the parts): the same in every process, unlike `hash`."""
  return int(hashlib.sha1("\t".join(map(str, parts)).encode("utf-8")).hexdigest(), 16)


def article_split(title: str) -> Tuple[str, bool]:
  """(split, held out) of an article, from the sha1 of its title."""
  digest = hashlib.sha1(title.encode("utf-8")).hexdigest()
  bucket = int(digest[:8], 16) % 10
  split = "test" if bucket == 0 else "dev" if bucket == 1 else "train"
  return split, int(digest[8:16], 16) % 20 == 0


def articles(raw: Optional[Sequence[dict]] = None) -> List[Article]:
  """The asset's articles with their split; `raw` defaults to `assets.wiki_summaries()`."""
  raw = assets.wiki_summaries() if raw is None else raw
  out = []
  for number, entry in enumerate(raw, 1):
    split, held_out = article_split(entry["title"])
    out.append(Article(number, entry["title"], " ".join(entry["text"].split()),
                       " ".join(entry.get("description", "").split()), entry.get("topic", ""),
                       split, held_out))
  return out


def sentences(text: str) -> List[str]:
  """`text` split into sentences at a `.`, `!` or `?` followed by a capital, except after an
  abbreviation ("St.", "c.") or an initial ("François E. Matthes")."""
  out, start = [], 0
  for match in _SENTENCE_END.finditer(text):
    before = text[start:match.start() + 1].split()
    last = before[-1].rstrip(".").lower() if before else ""
    if last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha()):
      continue
    out.append(text[start:match.end()].strip())
    start = match.end()
  if text[start:].strip():
    out.append(text[start:].strip())
  return out


@functools.lru_cache(maxsize=None)
def _value_pattern(value: str) -> re.Pattern:
  """`value` as a whole token: not inside a longer number or word ("1919" is not in "21919"
  nor in "1919.5", "32" not in "15,32")."""
  return re.compile(rf"(?<![\w,.]){re.escape(value)}(?![\w]|[,.]\d)")


def count(text: str, value: str) -> int:
  """How often `value` occurs in `text` as a whole token."""
  return len(_value_pattern(value).findall(text))


def replace_once(text: str, value: str, new: str) -> str:
  """`text` with the first whole-token `value` replaced by `new` (there must be one)."""
  match = _value_pattern(value).search(text)
  return text[:match.start()] + new + text[match.end():]


@dataclasses.dataclass(frozen=True)
class Fact:
  """A value in a sentence of an article: what a claim, question or clue can turn on."""
  title: str
  kind: str       # YEAR, NUMBER or COUNTRY
  value: str
  sentence: str


class Values:
  """Finds years, numbers and countries in text, and picks the value that replaces one.

  Attributes:
    countries: the country names, sorted.
    patterns: kind (YEAR, NUMBER, COUNTRY) -> the compiled pattern of its values.
  """

  def __init__(self, all_articles: Sequence[Article]):
    countries = set()
    for article in all_articles:
      if article.topic == "Geography" and re.match(
          r"^(?:Island |Sovereign |Landlocked |Transcontinental )?[Cc]ountry\b",
          article.description):
        name = re.sub(r"^The ", "", article.core)
        if name not in _AMBIGUOUS_COUNTRIES:
          countries.add(name)
    self.countries = sorted(countries)
    names = "|".join(re.escape(c) for c in sorted(countries, key=lambda c: (-len(c), c)))
    self.patterns = {YEAR: re.compile(YEAR_PATTERN), NUMBER: re.compile(NUMBER_PATTERN),
                     COUNTRY: re.compile(rf"(?<![\w-])(?:{names})(?![\w-])")}
    pools = collections.defaultdict(set)
    for article in all_articles:
      for kind, value, _ in self.find(article.text):
        pools[article.topic, kind].add(value)
    self._pools = {key: sorted(values) for key, values in pools.items()}

  def find(self, text: str) -> List[Tuple[str, str, int]]:
    """(kind, value, offset) of each value in `text`, in order; a year is not also a number."""
    found = {}
    for kind in (NUMBER, YEAR, COUNTRY):  # a year overwrites the number at its offset
      for match in self.patterns[kind].finditer(text):
        found[match.start()] = (kind, match.group(0), match.start())
    return [found[offset] for offset in sorted(found)]

  def swap(self, article: Article, kind: str, value: str) -> Optional[str]:
    """The value of `kind` that replaces `value` in `article`: from the sorted pool of the
    topic's values of that kind, starting at a hash of (title, value), the first that differs
    from `value`, is not in the article's text (as a substring) and is `_plausible`. None if
    there is none."""
    pool = self._pools.get((article.topic, kind), [])
    if not pool:
      return None
    start = hash_of(article.title, value) % len(pool)
    for i in range(len(pool)):
      candidate = pool[(start + i) % len(pool)]
      if (candidate != value and candidate not in article.text and value not in candidate
          and _plausible(kind, value, candidate)):
        return candidate
    return None


def _plausible(kind: str, value: str, candidate: str) -> bool:
  """Whether `candidate` could pass for `value`: a year within a century of it, a number
  with as many digits; so that a changed claim is not refuted by its magnitude alone."""
  if kind == YEAR:
    return abs(int(candidate) - int(value)) <= 100
  if kind == NUMBER:
    return len(candidate.replace(",", "")) == len(value.replace(",", ""))
  return True


@dataclasses.dataclass(frozen=True)
class First:
  """A first sentence "{intro}{The }{subject}{aliases} {verb} {predicate}"."""
  intro: str       # "In mathematics, " or ""
  subject: str     # how questions name the article: "the muskox", "Brunei"
  surface: str     # the title as the text writes it: "muskox"
  verb: str        # is, was, are, were
  predicate: str   # to the end of the sentence, its final stop included


def first_sentence(article: Article, sentence: str) -> Optional[First]:
  """`sentence` read as "{Title} is {predicate}", or None when it does not start so."""
  match = COPULA.search(sentence)
  if match is None:
    return None
  head = sentence[:match.start()]
  intro = _INTRO.match(head)
  intro_text = intro.group(0) if intro else ""
  head = head[len(intro_text):]
  the = re.match(r"(?:The|the|A|An) ", head)
  name = head[the.end() if the else 0:]
  core = article.core
  if not name.lower().startswith(core.lower()) or re.match(r"\w", name[len(core):len(core) + 1]):
    return None
  surface = name[:len(core)]
  subject = ("the " if the and the.group(0).lower() == "the " else "") + surface
  return First(intro_text, subject, surface, match.group(1), sentence[match.end():])


def _surname(article: Article) -> Optional[str]:
  last = article.core.split()[-1]
  if article.topic == "People" and len(last) >= 4 and last[0].isupper() and last.isalpha():
    return last
  return None


def names_subject(article: Article, sentence: str) -> bool:
  """Whether `sentence` holds the article's title (its core) or, for a person, the surname."""
  if re.search(rf"(?<!\w){re.escape(article.core.lower())}(?!\w)", sentence.lower()):
    return True
  surname = _surname(article)
  return surname is not None and re.search(rf"\b{re.escape(surname)}\b", sentence) is not None


def subject_start(article: Article, sentence: str) -> Optional[str]:
  """What follows the subject when `sentence` starts with it (the title, the surname of a
  person, or a pronoun), else None."""
  starts = [article.core, "The " + article.core, *_PRONOUNS]
  surname = _surname(article)
  if surname:
    starts.append(surname)
  for start in starts:
    if sentence.lower().startswith(start.lower()) and sentence[len(start):len(start) + 1] == " ":
      return sentence[len(start):]
  return None


def word_in(word: str, text: str) -> bool:
  """Whether `word` is a whole word of `text`, case-insensitively."""
  return re.search(rf"(?<!\w){re.escape(word.lower())}(?!\w)", text.lower()) is not None


class Wiki:
  """What the templates share: the articles, their passages, the values, and how often each
  word is written capitalised.

  Attributes:
    articles: every article of the asset, in its order.
    by_title: title -> article.
    values: the `Values` of all articles.
    passages: title -> [(id, text)] of each kept (not held-out) article.
  """

  def __init__(self, raw: Optional[Sequence[dict]] = None):
    self.articles = articles(raw)
    self.by_title = {a.title: a for a in self.articles}
    self.values = Values(self.articles)
    self.passages: Dict[str, List[Tuple[str, str]]] = {}
    for article in self.articles:
      if not article.held_out:
        self.passages[article.title] = [(f"{article.number}-{i}", chunk) for i, chunk
                                        in enumerate(corpus.chunk_words(article.text))]
    lower, upper = collections.Counter(), collections.Counter()
    for article in self.articles:
      for word in re.findall(r"[A-Za-z][a-z]+", article.text):
        (lower if word[0].islower() else upper)[word.lower()] += 1
    self._lower, self._upper = lower, upper

  @property
  def kept(self) -> List[Article]:
    """The articles in the passages files, in the asset's order."""
    return [a for a in self.articles if not a.held_out]

  def lower_first(self, phrase: str) -> str:
    """`phrase` with its first word lowercased unless the texts mostly capitalise it
    ("Species of ..." -> "species of ...", "Russian writer" stays)."""
    word = phrase.split()[0]
    if word[0].isupper() and word[1:].islower() and (
        self._lower[word.lower()] > self._upper[word.lower()]):
      return word.lower() + phrase[len(word):]
    return phrase

  @staticmethod
  def description(article: Article) -> str:
    """The article's description without a parenthesised qualifier."""
    return re.sub(r"\s*\([^)]*\)$", "", article.description).strip()

  def passage_of(self, article: Article, sentence: str) -> Optional[Tuple[str, str]]:
    """The passage (id, text) that holds all of `sentence`, if one does."""
    for passage in self.passages.get(article.title, ()):
      if sentence in passage[1]:
        return passage
    return None
