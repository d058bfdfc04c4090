"""Tasks derived deterministically from the embedded Wikipedia (`rag_jax.assets.wiki_summaries`,
10,033 vital articles: title, lead, description, topic), for training demos that need no
download.

`ensure()` writes, once, into `$RAG_JAX_CACHE/wiki-tasks-{digest}/` (`name()`: the digest is
of the code that derives and writes the files and of the asset's identity, so that changed
code writes a new directory instead of reusing one written by older code):

  passages.tsv               the retrieval corpus (DPR's `id<TAB>text<TAB>title`, `read_tsv`)
  passages_swapped.tsv       the same rows with the hot-swapped facts changed (below)
  fever/{split}.jsonl        FEVER's official JSONL (reader kind "fever")
  nq/{split}.json            DPR's retriever JSON (kind "dpr_qa", path `nq/{split}.json`),
                             each record with its `question_type` (below)
  jeopardy/{split}.source    answer -> clue, the seq2seq layout (kind "jeopardy")
  jeopardy/{split}.target

with split in train, dev, test and test_swapped. `python -m rag_jax.data.wiki_tasks` does the
same and prints `counts()`, the figures below (tests/test_wiki_tasks.py checks that they are).

Articles and splits. An article's split comes from the sha1 of its title (the first 8 hex
digits mod 10: 0 test, 1 dev, the rest train), and so does whether it is held out of the
corpus (the next 8 mod 20 == 0, about 5%). Every example is about one article and lands in
that article's split, so no test article was trained on. Held-out articles are in no passages
file; they give only FEVER's NOT ENOUGH INFO claims.

Sentences, values, swaps. A lead is split into sentences at `.`/`!`/`?` before a capital
(not after an abbreviation or an initial). A sentence "names the subject" when it holds the
title (its parenthesised part dropped, case-insensitively) or, for People, the surname. The
values a claim or question can turn on are years (1000-2029), other numbers (`32`, `15,693`)
and countries (the Geography articles described as a country). `_Values.swap(article, kind,
value)` is the value of the same kind that replaces one: walking a sorted pool of the values
of that kind in articles of the same topic, from a position given by a hash of (title, value),
the first that differs, does not occur in the article's text and could pass for it (a year
within 100 years, a number with as many digits).

Passages: each kept article's lead, split by `rag_jax.index.corpus.chunk_words` (100 words,
as `read_jsonl` splits articles), id `{n}-{chunk}` with n the article's 1-based position in
`wiki_summaries()` (the ids `--articles asset:wiki-summaries-en` gives). 9,541 articles,
11,735 passages.

FEVER (labels balanced in each split: each label is cut, in hash order, to the rarest's count,
and the file interleaves them, SUPPORTS, REFUTES, NOT ENOUGH INFO in turn, so that its first 3m
claims are balanced too; evidence names the article's page, so `gold_titles` is its title):
  * SUPPORTS: a sentence of the lead, as it is, that names the subject and has 6 to 50 words:
    one per article, chosen by hash.
  * REFUTES: such a sentence that holds a value, with one value (chosen by hash) replaced by
    `_Values.swap`: one per article.
  * NOT ENOUGH INFO: up to 3 such sentences of a held-out article, as they are.
  Counts (SUPPORTS = REFUTES = NOT ENOUGH INFO, each): train 596, dev 111, test 74; NOT ENOUGH
  INFO (about 5% of articles) is the rarest.

NQ-style QA (answers occur in a passage of the gold article; no question contains one), by
`question_type`:
  * title: "Which {description} {is} {predicate}?" from a first sentence "{Title} is
    {predicate}", the predicate cut at its first comma, semicolon or bracket; the answer is the
    title as the text writes it. The predicate stops before a relative clause (that, which,
    who) when 3 words are left; needs 3 to 25 words of predicate and a description of at most
    10 words without the title.
  * year: "In what year was {subject} {founded ...}?" / "In what year did {subject} {die
    ...}?" from a sentence that starts with the subject (or It/He/She/They) and says the
    passive or past verb happened "in {year}" (one of a fixed list of verbs); and, for
    History, "In what year did {subject} begin?" / "... end?" from "fought (lasted, ruled,
    ...) from {year} to {year}".
  * country: "In which country is {subject}?" from a first sentence "{Title} is a {place noun
    phrase} in {country}", and "Which country has {subject} as its capital?" from "{Title} is
    the capital of {country}".
  * number: "How many {noun} does {subject} have?" (and consist of, comprise, contain, is
    divided into, is composed of) from a sentence that starts with the subject, and "What is
    the atomic number of {element}?". Not "32 million speakers" (the answer would be half).
  Counts per type (title / year / country / number): train 3,867 / 121 / 83 / 99, dev
  479 / 25 / 12 / 10, test 479 / 16 / 11 / 9.

Jeopardy (source: the title; target: the clue): the first sentence "{Title} is {predicate}."
becomes "This {description} is {predicate}." (a description of at most 8 words, else a noun
for the topic), kept only when no word of the title (3 letters or more) is in the clue.
Counts: train 4,232, dev 548, test 521.

Hot swap: facts (article, value) of test articles, in hash order, whose value occurs once in
the article's text and whose sentence lies in one passage, and which a test example of some
task turns on, until each task has 60 or there are no more: a year, number or country answer
(QA); the value in a SUPPORTS sentence or the value a REFUTES claim replaced (FEVER); a value in
a clue (Jeopardy). In `passages_swapped.tsv` that value becomes `_Values.swap`'s. Each
`test_swapped` file holds every test example of the task that turns on a swapped fact, with
its new gold: the new value (QA), the flipped label (FEVER: SUPPORTS -> REFUTES and the other
way), the clue with the new value (Jeopardy). A fact is not swapped when its value is in a test
question of its article (that question would no longer match its passage). The test split
runs out before 60: counts QA 23 (year 11, country 4, number 8), FEVER 49 (37 REFUTES ->
SUPPORTS, 12 SUPPORTS -> REFUTES), Jeopardy 42; 93 passages change.
"""

import argparse
import collections
import csv
import dataclasses
import functools
import hashlib
import inspect
import json
import os
import pathlib
import re
import shutil
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from rag_jax import assets
from rag_jax.data import fever
from rag_jax.index import corpus

ASSET = "wiki-summaries-en"
SPLITS = ("train", "dev", "test")
SWAPPED = "test_swapped"
SWAPS_PER_TASK = 60
MAX_NEI_PER_ARTICLE = 3
JEOPARDY_NOUNS = {
    "People": "person", "Geography": "place", "History": "subject of history",
    "Arts": "work or form of art", "Biology and health sciences": "subject of biology",
    "Physical sciences": "subject of science", "Technology": "technology",
    "Mathematics": "mathematical subject", "Philosophy and religion": "subject of belief",
    "Society and social sciences": "subject of society", "Everyday life": "part of everyday life",
}
DEFAULT_NOUN = "subject"

YEAR, NUMBER, COUNTRY = "year", "number", "country"
QUESTION_TYPES = ("title", YEAR, COUNTRY, NUMBER)
_YEAR = r"(?<![\w,.])(?:1\d{3}|20[0-2]\d)(?![\w]|[,.]\d)"
_NUMBER = r"(?<![\w,.–-])(?:\d{1,3}(?:,\d{3})+|\d+)(?![\w%–-]|[,.]\d)"
# Country names that are also common words, people or other places.
_AMBIGUOUS_COUNTRIES = {"Georgia", "Jordan", "Chad", "Turkey", "Guinea", "Dominica", "Grenada"}
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "c", "ca", "no", "mt", "ft",
                  "gen", "lt", "col", "u.s", "u.k", "e.g", "i.e", "etc", "approx", "fl", "lit"}
_SENTENCE_END = re.compile(r"[.!?][\"”’)]?\s+(?=[\"“(]?[A-Z])")
_COPULA = re.compile(r"\s(is|was|are|were)\s")
_INTRO = re.compile(r"^(?:In|Within|According to) [^,]{1,60}, ")
_STOPWORDS = {"the", "and", "for", "with", "from", "into", "of", "in", "on", "at", "by"}


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


def _hash(*parts: object) -> int:
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


def _count(text: str, value: str) -> int:
  return len(_value_pattern(value).findall(text))


def _replace_once(text: str, value: str, new: str) -> str:
  match = _value_pattern(value).search(text)
  return text[:match.start()] + new + text[match.end():]


@dataclasses.dataclass(frozen=True)
class Fact:
  """A value in a sentence of an article: what a claim, question or clue can turn on."""
  title: str
  kind: str       # YEAR, NUMBER or COUNTRY
  value: str
  sentence: str


@dataclasses.dataclass
class Tasks:
  """What `derive` makes, before it is written: the passages (before and after the hot swap)
  and each task's examples by split."""
  passages: List[Tuple[str, str, str]]          # (id, text, title)
  swapped: List[Tuple[str, str, str]]
  fever: Dict[str, List[dict]]                  # split -> official FEVER records
  nq: Dict[str, List[dict]]                     # split -> DPR retriever records
  jeopardy: Dict[str, List[Tuple[str, str]]]    # split -> (source, target)


class _Values:
  """Finds years, numbers and countries in text, and picks the value that replaces one."""

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
    self._patterns = {YEAR: re.compile(_YEAR), NUMBER: re.compile(_NUMBER),
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
      for match in self._patterns[kind].finditer(text):
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
    start = _hash(article.title, value) % len(pool)
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


_DATE = r"(?:in|on (?:\d{1,2} )?[A-Z][a-z]+(?: \d{1,2},)?)"
_CLAUSE_END = r"(?=\s*[,.;]|\s+(?:and|by|at|with|after|when|following|as|under|until|for)\b)"
_PASSIVE = ("founded|established|born|built|completed|published|released|discovered|invented|"
            "signed|written|composed|introduced|launched|opened|adopted|ratified|formed|"
            "created|elected|crowned|named|proclaimed|declared|dissolved|abolished|unified|"
            "annexed|incorporated|described|synthesized|isolated|ordained|appointed|"
            "inaugurated|assassinated|executed|canonized|consecrated|premiered|performed|"
            "patented|developed|designed|produced|killed|conquered|captured|destroyed|"
            "discontinued|recognized|admitted|awarded|ennobled|selected|designated|inscribed|"
            "renamed|rebuilt|restored|identified|knighted|granted|fought|held|formed|"
            "first described|first published|first used|first observed|first isolated")
_ACTIVE = {"died": "die", "began": "begin", "ended": "end", "became": "become", "won": "win",
           "joined": "join", "moved": "move", "married": "marry", "received": "receive",
           "emigrated": "emigrate", "retired": "retire", "returned": "return",
           "collapsed": "collapse", "gained": "gain", "entered": "enter", "founded": "found",
           "wrote": "write", "proposed": "propose", "formulated": "formulate",
           "abdicated": "abdicate", "succeeded": "succeed", "converted": "convert",
           "graduated": "graduate", "earned": "earn", "debuted": "debut", "occurred": "occur",
           "started": "start", "erupted": "erupt", "merged": "merge", "published": "publish",
           "released": "release", "discovered": "discover", "invented": "invent"}
_HOW_MANY = {"has": ("does", "have"), "have": ("do", "have"), "had": ("did", "have"),
             "consists of": ("does", "consist of"), "consisted of": ("did", "consist of"),
             "comprises": ("does", "comprise"), "comprised": ("did", "comprise"),
             "contains": ("does", "contain"), "contained": ("did", "contain")}
_PARTICIPLES = ("divided into", "composed of", "made up of")
_COMPASS = ("(?:(?:north|south|east|west|central|northern|southern|eastern|western|"
            "north-?eastern|north-?western|south-?eastern|south-?western) )?")
_PRONOUNS = ("It", "He", "She", "They")


@dataclasses.dataclass(frozen=True)
class _First:
  """A first sentence "{intro}{The }{subject}{aliases} {verb} {predicate}"."""
  intro: str       # "In mathematics, " or ""
  subject: str     # how questions name the article: "the muskox", "Brunei"
  surface: str     # the title as the text writes it: "muskox"
  verb: str        # is, was, are, were
  predicate: str   # to the end of the sentence, its final stop included


def _first_sentence(article: Article, sentence: str) -> Optional[_First]:
  match = _COPULA.search(sentence)
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
  return _First(intro_text, subject, surface, match.group(1), sentence[match.end():])


def _surname(article: Article) -> Optional[str]:
  last = article.core.split()[-1]
  if article.topic == "People" and len(last) >= 4 and last[0].isupper() and last.isalpha():
    return last
  return None


def _names_subject(article: Article, sentence: str) -> bool:
  if re.search(rf"(?<!\w){re.escape(article.core.lower())}(?!\w)", sentence.lower()):
    return True
  surname = _surname(article)
  return surname is not None and re.search(rf"\b{re.escape(surname)}\b", sentence) is not None


def _subject_start(article: Article, sentence: str) -> Optional[str]:
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


def _word_in(word: str, text: str) -> bool:
  return re.search(rf"(?<!\w){re.escape(word.lower())}(?!\w)", text.lower()) is not None


@dataclasses.dataclass(frozen=True)
class _Question:
  kind: str                    # title, year, country, number
  question: str
  answer: str
  sentence: str
  fact: Optional[Fact] = None  # the value the answer is, for year, country, number


class _Builder:
  """The templates, with what they share: the articles, their passages, the values."""

  def __init__(self, raw: Optional[Sequence[dict]]):
    self.articles = articles(raw)
    self.by_title = {a.title: a for a in self.articles}
    self.values = _Values(self.articles)
    self.passages: Dict[str, List[Tuple[str, str]]] = {}  # title -> [(id, text)]
    for article in self.articles:
      if not article.held_out:
        self.passages[article.title] = [(f"{article.number}-{i}", chunk) for i, chunk
                                        in enumerate(corpus.chunk_words(article.text))]
    lower, upper = collections.Counter(), collections.Counter()
    for article in self.articles:
      for word in re.findall(r"[A-Za-z][a-z]+", article.text):
        (lower if word[0].islower() else upper)[word.lower()] += 1
    self._lower, self._upper = lower, upper

  def lower_first(self, phrase: str) -> str:
    """`phrase` with its first word lowercased unless the texts mostly capitalise it
    ("Species of ..." -> "species of ...", "Russian writer" stays)."""
    word = phrase.split()[0]
    if word[0].isupper() and word[1:].islower() and (
        self._lower[word.lower()] > self._upper[word.lower()]):
      return word.lower() + phrase[len(word):]
    return phrase

  def description(self, article: Article) -> str:
    return re.sub(r"\s*\([^)]*\)$", "", article.description).strip()

  def passage_of(self, article: Article, sentence: str) -> Optional[Tuple[str, str]]:
    """The passage (id, text) that holds all of `sentence`, if one does."""
    for passage in self.passages.get(article.title, ()):
      if sentence in passage[1]:
        return passage
    return None

  # ----------------------------------------------------------------------------------------
  # FEVER.

  def claim_sentences(self, article: Article) -> List[str]:
    return [s for s in sentences(article.text)
            if _names_subject(article, s) and 6 <= len(s.split()) <= 50]

  def supports(self, article: Article) -> Optional[str]:
    candidates = self.claim_sentences(article)
    return min(candidates, key=lambda s: _hash("S", article.title, s)) if candidates else None

  def refutes(self, article: Article) -> Optional[Tuple[str, str, Fact]]:
    """(claim, sentence, the fact it changes)."""
    options = [(s, kind, value, offset) for s in self.claim_sentences(article)
               for kind, value, offset in self.values.find(s)]
    for s, kind, value, offset in sorted(options, key=lambda o: _hash("R", article.title, *o)):
      new = self.values.swap(article, kind, value)
      if new is not None:
        return (s[:offset] + new + s[offset + len(value):], s,
                Fact(article.title, kind, value, s))
    return None

  # ----------------------------------------------------------------------------------------
  # QA.

  def questions(self, article: Article) -> List[_Question]:
    out = []
    lead = sentences(article.text)
    first = _first_sentence(article, lead[0]) if lead else None
    subject = first.subject if first and article.topic != "People" else article.core
    if first:
      out += self._title_question(article, first, lead[0])
      out += self._country_question(article, first, lead[0])
    for s in lead:
      rest = _subject_start(article, s)
      if rest is not None:
        out += self._year_question(article, subject, s, rest)
        out += self._number_question(article, subject, s, rest)
      match = re.search(r"\batomic number (\d+)\b", s)
      if match and article.description.lower().startswith("chemical element"):
        out.append(_Question("number", f"What is the atomic number of {article.core}?",
                             match.group(1), s, Fact(article.title, NUMBER, match.group(1), s)))
    seen, kept = set(), []
    for q in out:
      if q.question in seen or q.answer.lower() in q.question.lower():
        continue
      if not any(q.answer in text for _, text in self.passages.get(article.title, ())):
        continue
      seen.add(q.question)
      kept.append(q)
    return kept

  def _title_question(self, article: Article, first: _First, sentence: str):
    desc = self.description(article)
    predicate = re.split(r"[,;(:]|\.$", first.predicate)[0].strip()
    # A relative clause makes the question long and is rarely needed to tell the answer.
    clause = re.search(r" (?:that|which|who|whose|where)\b", predicate)
    if clause and len(predicate[:clause.start()].split()) >= 3:
      predicate = predicate[:clause.start()]
    predicate = re.sub(r"(?: (?:in|of|by|on|at|for|to|with|from|and|or|as))+$", "", predicate)
    words = predicate.split()
    if not desc or len(desc.split()) > 10 or len(words) < 3 or len(words) > 25:
      return []
    plain = re.sub(r"^(?:a|an|the) ", "", predicate.lower())
    if plain in desc.lower() or desc.lower() in plain:
      return []
    answer = article.core if article.core in article.text else first.surface
    verb = {"are": "is", "were": "was"}.get(first.verb, first.verb)
    question = f"Which {self.lower_first(desc)} {verb} {predicate}?"
    if _word_in(answer, question):
      return []
    return [_Question("title", question, answer, sentence)]

  def _country_question(self, article: Article, first: _First, sentence: str):
    if article.topic == "People" or first.verb not in ("is", "was"):
      return []
    countries = self.values._patterns[COUNTRY].pattern  # pylint: disable=protected-access
    capital = re.match(rf"the capital (?:city )?(?:and (?:the )?(?:largest|most populous) city )?"
                       rf"of (?:the )?({countries})", first.predicate)
    if capital and first.verb == "is":
      return [_Question("country", f"Which country has {first.subject} as its capital?",
                        capital.group(1), sentence,
                        Fact(article.title, COUNTRY, capital.group(1), sentence))]
    place = re.match(rf"(?:a|an|the) ((?:(?!\b(?:who|which|that|whose|by|of)\b)[^,;()])"
                     rf"{{1,60}}?) (?:located |situated )?in (?:the )?{_COMPASS}({countries})",
                     first.predicate)
    if place:
      return [_Question("country", f"In which country {first.verb} {first.subject}?",
                        place.group(2), sentence,
                        Fact(article.title, COUNTRY, place.group(2), sentence))]
    return []

  def _year_question(self, article: Article, subject: str, sentence: str, rest: str):
    # "was founded in 1919", or a first sentence's "is a band formed in Düsseldorf in 1970".
    passive = re.match(rf"(?:(was|were) |(is|are|was|were) (?:(?!\b(?:who|which|that|whose|"
                       rf"where)\b)[^,;()\d])*? )((?:first |officially |formally |originally )?"
                       rf"(?:{_PASSIVE}))((?: [^\d,;.()]{{1,60}}?)?) {_DATE} ({_YEAR})"
                       rf"{_CLAUSE_END}", rest.lstrip())
    span = re.search(rf"\b(?:from ({_YEAR}) to ({_YEAR})|between ({_YEAR}) and ({_YEAR}))\b",
                     sentence)
    if passive:
      aux = "were" if (passive.group(1) or passive.group(2)) in ("were", "are") else "was"
      question = f"In what year {aux} {subject} {passive.group(3)}{passive.group(4)}?"
      year = passive.group(5)
    elif span and article.topic == "History" and re.search(
        r"\b(?:fought|lasted|ruled|existed|took place|spanned|reigned|occurred)\b", rest):
      first, last = (span.group(1), span.group(2)) if span.group(1) else span.group(3, 4)
      return [_Question("year", f"In what year did {subject} begin?", first, sentence,
                        Fact(article.title, YEAR, first, sentence)),
              _Question("year", f"In what year did {subject} end?", last, sentence,
                        Fact(article.title, YEAR, last, sentence))]
    else:
      verbs = "|".join(_ACTIVE)
      active = re.match(rf"({verbs})((?: [^\d,;.()]{{1,60}}?)?) {_DATE} ({_YEAR}){_CLAUSE_END}",
                        rest.lstrip())
      if not active:
        return []
      question = f"In what year did {subject} {_ACTIVE[active.group(1)]}{active.group(2)}?"
      year = active.group(3)
    return [_Question("year", question, year, sentence, Fact(article.title, YEAR, year, sentence))]

  def _number_question(self, article: Article, subject: str, sentence: str, rest: str):
    verbs = "|".join(sorted(_HOW_MANY, key=len, reverse=True))
    participles = "|".join(_PARTICIPLES)
    match = re.match(
        rf"((?:(?!\b(?:who|which|that|whose|where)\b)[^,;])*?)\b(?:({verbs})|(?:(is|was|are|"
        rf"were) )?({participles})) (?:about |approximately |over |more than |nearly |around )?"
        rf"({_NUMBER}) ((?:[a-z-]+ ){{0,2}}[a-z-]+s)(?=\s*[,.;:)]|\s+(?:and|in|of|with|that|"
        rf"which|from|on|at|to|for|between|across|by)\b)", rest.lstrip())
    if not match or match.group(5) in ("0", "1") or re.match(
        r"(?:hundred|thousand|million|billion|trillion|percent|per)\b", match.group(6)):
      return []
    number, noun = match.group(5), match.group(6)
    if match.group(2):
      aux, verb = _HOW_MANY[match.group(2)]
      question = f"How many {noun} {aux} {subject} {verb}?"
    else:
      copula = match.group(3)
      if copula is None:
        found = _COPULA.search(" " + rest)
        copula = found.group(1) if found else "is"
      copula = {"are": "is", "were": "was"}.get(copula, copula)
      question = f"How many {noun} {copula} {subject} {match.group(4)}?"
    return [_Question("number", question, number, sentence,
                      Fact(article.title, NUMBER, number, sentence))]

  # ----------------------------------------------------------------------------------------
  # Jeopardy.

  def clue(self, article: Article) -> Optional[Tuple[str, str, str]]:
    """(clue, its prefix "This {noun} is ", the predicate) from the first sentence."""
    lead = sentences(article.text)
    first = _first_sentence(article, lead[0]) if lead else None
    if first is None:
      return None
    desc = self.description(article)
    nouns = []
    if desc and len(desc.split()) <= 8:
      nouns.append(self.lower_first(desc))
    nouns.append(JEOPARDY_NOUNS.get(article.topic, DEFAULT_NOUN))
    title_words = [w for w in re.findall(r"\w+", article.title)
                   if len(w) >= 3 and w.lower() not in _STOPWORDS]
    verb = {"are": "is", "were": "was"}.get(first.verb, first.verb)
    for noun in nouns:
      this = "this" if first.intro else "This"
      prefix = f"{first.intro}{this} {noun} {verb} "
      clue = prefix + first.predicate
      if not any(_word_in(w, clue) for w in title_words):
        return clue, prefix, first.predicate
    return None


def derive(raw: Optional[Sequence[dict]] = None) -> Tasks:
  """All tasks, in memory: what `ensure` writes. `raw` defaults to `assets.wiki_summaries()`."""
  b = _Builder(raw)
  kept = [a for a in b.articles if not a.held_out]

  # FEVER: (article, label, claim, sentence, fact) by split, then balanced.
  claims = {split: collections.defaultdict(list) for split in SPLITS}
  for article in b.articles:
    if article.held_out:
      candidates = sorted(b.claim_sentences(article), key=lambda s: _hash("N", article.title, s))
      for s in candidates[:MAX_NEI_PER_ARTICLE]:
        claims[article.split][fever.NOT_ENOUGH_INFO].append((article, s, s, None))
      continue
    s = b.supports(article)
    if s is not None:
      claims[article.split][fever.SUPPORTS].append((article, s, s, None))
    r = b.refutes(article)
    if r is not None:
      claims[article.split][fever.REFUTES].append((article, *r))
  fever_claims = {}
  for split in SPLITS:
    n = min(len(claims[split][label]) for label in fever.LABELS)
    ranked = [[(label, *c) for c in sorted(claims[split][label],
                                           key=lambda c, l=label: _hash(l, c[0].title, c[1]))[:n]]
              for label in fever.LABELS]
    # Interleaved (one of each label in turn), so that the first 3m claims of a file are a
    # balanced subset: what `data.max_eval_examples` takes.
    fever_claims[split] = [c for triple in zip(*ranked) for c in triple]

  questions = {split: [] for split in SPLITS}
  clues = {split: [] for split in SPLITS}
  for article in kept:
    questions[article.split] += [(article, q) for q in b.questions(article)]
    clue = b.clue(article)
    if clue is not None:
      clues[article.split].append((article, *clue))

  swaps = _choose_swaps(b, fever_claims["test"], questions["test"], clues["test"])
  return _assemble(b, kept, fever_claims, questions, clues, swaps)


def _swapped_sentence(b: _Builder, article: Article, sentence: str,
                      swaps: Dict[Tuple[str, str], str]) -> str:
  for kind, value, _ in b.values.find(sentence):
    if (article.title, value) in swaps:
      sentence = _replace_once(sentence, value, swaps[article.title, value])
  return sentence


def _choose_swaps(b: _Builder, fever_test, questions_test, clues_test
                  ) -> Dict[Tuple[str, str], str]:
  """The hot swap's facts: (title, value) -> new value (see the module docstring)."""
  asked = collections.defaultdict(list)  # title -> questions, whose values must not change
  for article, q in questions_test:
    asked[article.title].append(q.question)
  uses = collections.defaultdict(collections.Counter)  # (title, value) -> task -> examples

  def eligible(article: Article, value: str, sentence: str) -> bool:
    return (article.text.count(value) == 1 and _count(article.text, value) == 1
            and b.passage_of(article, sentence) is not None
            and not any(value in q for q in asked[article.title]))

  for article, q in questions_test:
    if q.fact and eligible(article, q.answer, q.sentence):
      uses[article.title, q.answer]["nq"] += 1
  for label, article, claim, sentence, fact in fever_test:
    if label == fever.SUPPORTS:
      for _, value, _ in b.values.find(sentence):
        if eligible(article, value, sentence):
          uses[article.title, value]["fever"] += 1
    elif label == fever.REFUTES and eligible(article, fact.value, sentence):
      uses[fact.title, fact.value]["fever"] += 1
  for article, clue, prefix, predicate in clues_test:
    for _, value, _ in b.values.find(predicate):
      if eligible(article, value, predicate):
        uses[article.title, value]["jeopardy"] += 1

  kinds = {}
  for article in b.articles:
    if article.split == "test" and not article.held_out:
      for kind, value, _ in b.values.find(article.text):
        kinds[article.title, value] = kind
  counts, swaps = collections.Counter(), {}
  for key in sorted(uses, key=lambda k: _hash("swap", *k)):
    if all(counts[task] >= SWAPS_PER_TASK for task in ("nq", "fever", "jeopardy")):
      break
    if not any(counts[task] < SWAPS_PER_TASK for task in uses[key]):
      continue
    new = b.values.swap(b.by_title[key[0]], kinds[key], key[1])
    if new is None:
      continue
    swaps[key] = new
    counts.update(uses[key])
  return swaps


def _assemble(b: _Builder, kept: List[Article], fever_claims, questions, clues,
              swaps: Dict[Tuple[str, str], str]) -> Tasks:
  passages, swapped = [], []
  for article in kept:
    facts = [(value, new) for (title, value), new in swaps.items() if title == article.title]
    for pid, text in b.passages[article.title]:
      passages.append((pid, text, article.title))
      for value, new in facts:
        if _count(text, value):
          text = _replace_once(text, value, new)
      swapped.append((pid, text, article.title))
  swapped_text = {pid: text for pid, text, _ in swapped}

  fever_out = {split: [] for split in (*SPLITS, SWAPPED)}
  claim_id = 0
  for split in SPLITS:
    for label, article, claim, sentence, fact in fever_claims[split]:
      claim_id += 1
      record = {"id": claim_id, "label": label, "claim": claim}
      if label == fever.NOT_ENOUGH_INFO:
        record["evidence"] = [[[claim_id, None, None, None]]]
      else:
        index = sentences(article.text).index(sentence)
        record["evidence"] = [[[claim_id, claim_id, fever.page_name(article.title), index]]]
      fever_out[split].append(record)
      if split == "test" and label != fever.NOT_ENOUGH_INFO:
        new_sentence = _swapped_sentence(b, article, sentence, swaps)
        new_label = fever.SUPPORTS if claim == new_sentence else fever.REFUTES
        if new_label != label:
          fever_out[SWAPPED].append({**record, "label": new_label})

  def dpr(article: Article, q: _Question, answer: str, texts: Dict[str, str]) -> dict:
    pid, _ = b.passage_of(article, q.sentence) or b.passages[article.title][0]
    return {"question": q.question, "answers": [answer],
            "positive_ctxs": [{"title": article.title, "text": texts[pid], "passage_id": pid}],
            "negative_ctxs": [], "hard_negative_ctxs": [], "question_type": q.kind}

  original_text = {pid: text for pid, text, _ in passages}
  nq_out = {split: [] for split in (*SPLITS, SWAPPED)}
  for split in SPLITS:
    for article, q in questions[split]:
      nq_out[split].append(dpr(article, q, q.answer, original_text))
      if split == "test" and q.fact and (article.title, q.answer) in swaps:
        nq_out[SWAPPED].append(dpr(article, q, swaps[article.title, q.answer], swapped_text))

  jeopardy_out = {split: [] for split in (*SPLITS, SWAPPED)}
  for split in SPLITS:
    for article, clue, prefix, predicate in clues[split]:
      jeopardy_out[split].append((article.title, clue))
      if split == "test":
        new = prefix + _swapped_sentence(b, article, predicate, swaps)
        if new != clue:
          jeopardy_out[SWAPPED].append((article.title, new))
  return Tasks(passages, swapped, fever_out, nq_out, jeopardy_out)


def _write_tsv(path: pathlib.Path, rows: Iterable[Tuple[str, str, str]]) -> None:
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t", lineterminator="\n")
    writer.writerow(corpus.TSV_COLUMNS)
    writer.writerows(rows)


def write(tasks: Tasks, directory: os.PathLike) -> None:
  """Writes `tasks`' files into `directory` (which must exist)."""
  directory = pathlib.Path(directory)
  _write_tsv(directory / "passages.tsv", tasks.passages)
  _write_tsv(directory / "passages_swapped.tsv", tasks.swapped)
  for name in ("fever", "nq", "jeopardy"):
    (directory / name).mkdir()
  for split, records in tasks.fever.items():
    with open(directory / "fever" / f"{split}.jsonl", "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
  for split, records in tasks.nq.items():
    with open(directory / "nq" / f"{split}.json", "w", encoding="utf-8") as f:
      json.dump(records, f, ensure_ascii=False, indent=1)
      f.write("\n")
  for split, pairs in tasks.jeopardy.items():
    for suffix, column in ((".source", 0), (".target", 1)):
      with open(directory / "jeopardy" / f"{split}{suffix}", "w", encoding="utf-8") as f:
        f.writelines(pair[column] + "\n" for pair in pairs)


@functools.lru_cache(maxsize=None)
def name() -> str:
  """The cache directory's name, `wiki-tasks-{the first 12 hex digits of a sha256}` of what
  the files depend on: the sources of this module (the templates), of `fever` (page names)
  and of `rag_jax.index.corpus` (chunks, TSV columns), the function that reads the asset, and
  the asset's identity. A change to any of them is a new directory, never files written by
  older code. Computed once a process, since `resolve` calls `ensure` for every path."""
  asset = assets.ASSETS[ASSET]
  parts = [pathlib.Path(path).read_bytes() for path in (__file__, fever.__file__, corpus.__file__)]
  parts.append(inspect.getsource(assets.wiki_summaries).encode("utf-8"))
  parts.append(json.dumps([ASSET, asset.package, asset.version, asset.wheel_sha256,
                           asset.folder, list(asset.files)]).encode("utf-8"))
  digest = hashlib.sha256()
  for part in parts:  # each preceded by its length, so that no two lists hash alike
    digest.update(len(part).to_bytes(8, "big") + part)
  return f"wiki-tasks-{digest.hexdigest()[:12]}"


def ensure(root: Optional[os.PathLike] = None) -> pathlib.Path:
  """The directory of the tasks' files, `root` or `$RAG_JAX_CACHE/{name()}`, written on first
  use.

  Built in a temporary directory next to it and renamed into place, so that a directory under
  the final name is always complete; when another process renames first, its files (the same
  bytes) are kept and these removed.
  """
  target = pathlib.Path(root) if root is not None else assets.cache_dir() / name()
  if target.is_dir():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
  try:
    write(derive(), tmp)
    os.rename(tmp, target)
  except OSError:
    if not target.is_dir():
      raise
  finally:
    if tmp.exists():
      shutil.rmtree(tmp)
  return target


PREFIX = "wiki-tasks:"


def resolve(spec: str) -> str:
  """A config's path: `wiki-tasks:REL` is REL under `ensure()` (the files written on first
  use); anything else is returned as it is."""
  if not spec.startswith(PREFIX):
    return spec
  return str(ensure() / spec[len(PREFIX):])


def counts(directory: os.PathLike) -> Dict[str, Dict[str, object]]:
  """What the files hold, the figures of the module docstring: the corpus's articles and
  passages, and the passages the hot swap changes; per split, FEVER's claims by label
  (test_swapped: the new labels), QA's questions by type, Jeopardy's clues."""
  from rag_jax import data  # pylint: disable=import-outside-toplevel
  directory = pathlib.Path(directory)
  passages = list(corpus.read_tsv(directory / "passages.tsv"))
  swapped = list(corpus.read_tsv(directory / "passages_swapped.tsv"))
  out = {"corpus": {"articles": len({p["title"] for p in passages}), "passages": len(passages),
                    "swapped_passages": sum(a != b for a, b in zip(passages, swapped))}}
  for split in (*SPLITS, SWAPPED):
    labels = collections.Counter(
        e.label for e in data.read("fever", directory / "fever", split))
    with open(directory / "nq" / f"{split}.json", encoding="utf-8") as f:
      types = collections.Counter(record["question_type"] for record in json.load(f))
    out[split] = {"fever": {label: labels[label] for label in fever.LABELS},
                  "nq": {kind: types[kind] for kind in QUESTION_TYPES},
                  "jeopardy": len(data.read("jeopardy", directory / "jeopardy", split))}
  return out


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help=f"directory (default $RAG_JAX_CACHE/{name()})")
  args = parser.parse_args(argv)
  directory = ensure(args.out)
  print(directory)
  for part, value in counts(directory).items():
    print(f"{part}: {json.dumps(value)}")


if __name__ == "__main__":
  main()
