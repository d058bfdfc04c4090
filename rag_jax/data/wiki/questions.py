"""NQ-style questions from the embedded Wikipedia, written as DPR's retriever JSON (reader kind
"dpr_qa", path `nq/{split}.json`), each record with its `question_type`.

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
"""

import collections
import dataclasses
import re
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from rag_jax.data.wiki import swap
from rag_jax.data.wiki import text

TYPES = ("title", text.YEAR, text.COUNTRY, text.NUMBER)  # `question_type`s, in this order
_YEAR, _NUMBER = text.YEAR_PATTERN, text.NUMBER_PATTERN
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


@dataclasses.dataclass(frozen=True)
class Question:
  """One question about an article and its answer, before it is written."""
  kind: str                         # a TYPES entry
  question: str
  answer: str
  sentence: str                     # the lead's sentence it was made from
  fact: Optional[text.Fact] = None  # the value the answer is, for year, country, number


Asked = Tuple[text.Article, Question]


def derive(wiki: text.Wiki) -> Dict[str, List[Asked]]:
  """split -> (article, question) of each kept article, in the asset's order."""
  out = {split: [] for split in text.SPLITS}
  for article in wiki.kept:
    out[article.split] += [(article, q) for q in questions(wiki, article)]
  return out


def turns_on(test: Sequence[Asked]) -> Iterator[swap.Use]:
  """The values the test questions turn on: their year, country and number answers."""
  for article, q in test:
    if q.fact:
      yield article, q.answer, q.sentence


def asked(test: Sequence[Asked]) -> Dict[str, List[str]]:
  """title -> the test questions about that article (values the hot swap must leave)."""
  out = collections.defaultdict(list)
  for article, q in test:
    out[article.title].append(q.question)
  return out


def records(wiki: text.Wiki, asked_by_split: Dict[str, List[Asked]], swaps: swap.Swaps,
            swapped: Sequence[swap.Row]) -> Dict[str, List[dict]]:
  """split (and swap.SWAPPED) -> DPR's retriever records; a swapped question's positive
  passage is the text of `swapped` (the rows of `passages_swapped.tsv`)."""
  before = {pid: passage for rows in wiki.passages.values() for pid, passage in rows}
  after = {pid: passage for pid, passage, _ in swapped}

  def dpr(article: text.Article, q: Question, answer: str, texts: Dict[str, str]) -> dict:
    pid, _ = wiki.passage_of(article, q.sentence) or wiki.passages[article.title][0]
    return {"question": q.question, "answers": [answer],
            "positive_ctxs": [{"title": article.title, "text": texts[pid], "passage_id": pid}],
            "negative_ctxs": [], "hard_negative_ctxs": [], "question_type": q.kind}

  out = {split: [] for split in (*text.SPLITS, swap.SWAPPED)}
  for split in text.SPLITS:
    for article, q in asked_by_split[split]:
      out[split].append(dpr(article, q, q.answer, before))
      if split == "test" and q.fact and (article.title, q.answer) in swaps:
        out[swap.SWAPPED].append(dpr(article, q, swaps[article.title, q.answer], after))
  return out


def questions(wiki: text.Wiki, article: text.Article) -> List[Question]:
  """The article's questions of every type (the module docstring), each asked once, none
  holding its answer, each answer in one of the article's passages."""
  out = []
  lead = text.sentences(article.text)
  first = text.first_sentence(article, lead[0]) if lead else None
  subject = first.subject if first and article.topic != "People" else article.core
  if first:
    out += _title_question(wiki, article, first, lead[0])
    out += _country_question(wiki, article, first, lead[0])
  for s in lead:
    rest = text.subject_start(article, s)
    if rest is not None:
      out += _year_question(article, subject, s, rest)
      out += _number_question(article, subject, s, rest)
    match = re.search(r"\batomic number (\d+)\b", s)
    if match and article.description.lower().startswith("chemical element"):
      out.append(Question("number", f"What is the atomic number of {article.core}?",
                          match.group(1), s,
                          text.Fact(article.title, text.NUMBER, match.group(1), s)))
  seen, kept = set(), []
  for q in out:
    if q.question in seen or q.answer.lower() in q.question.lower():
      continue
    if not any(q.answer in passage for _, passage in wiki.passages.get(article.title, ())):
      continue
    seen.add(q.question)
    kept.append(q)
  return kept


def _title_question(wiki: text.Wiki, article: text.Article, first: text.First,
                    sentence: str) -> List[Question]:
  desc = wiki.description(article)
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
  question = f"Which {wiki.lower_first(desc)} {verb} {predicate}?"
  if text.word_in(answer, question):
    return []
  return [Question("title", question, answer, sentence)]


def _country_question(wiki: text.Wiki, article: text.Article, first: text.First,
                      sentence: str) -> List[Question]:
  if article.topic == "People" or first.verb not in ("is", "was"):
    return []
  countries = wiki.values.patterns[text.COUNTRY].pattern
  capital = re.match(rf"the capital (?:city )?(?:and (?:the )?(?:largest|most populous) city )?"
                     rf"of (?:the )?({countries})", first.predicate)
  if capital and first.verb == "is":
    return [Question("country", f"Which country has {first.subject} as its capital?",
                     capital.group(1), sentence,
                     text.Fact(article.title, text.COUNTRY, capital.group(1), sentence))]
  place = re.match(rf"(?:a|an|the) ((?:(?!\b(?:who|which|that|whose|by|of)\b)[^,;()])"
                   rf"{{1,60}}?) (?:located |situated )?in (?:the )?{_COMPASS}({countries})",
                   first.predicate)
  if place:
    return [Question("country", f"In which country {first.verb} {first.subject}?",
                     place.group(2), sentence,
                     text.Fact(article.title, text.COUNTRY, place.group(2), sentence))]
  return []


def _year_question(article: text.Article, subject: str, sentence: str,
                   rest: str) -> List[Question]:
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
    return [Question("year", f"In what year did {subject} begin?", first, sentence,
                     text.Fact(article.title, text.YEAR, first, sentence)),
            Question("year", f"In what year did {subject} end?", last, sentence,
                     text.Fact(article.title, text.YEAR, last, sentence))]
  else:
    verbs = "|".join(_ACTIVE)
    active = re.match(rf"({verbs})((?: [^\d,;.()]{{1,60}}?)?) {_DATE} ({_YEAR}){_CLAUSE_END}",
                      rest.lstrip())
    if not active:
      return []
    question = f"In what year did {subject} {_ACTIVE[active.group(1)]}{active.group(2)}?"
    year = active.group(3)
  return [Question("year", question, year, sentence,
                   text.Fact(article.title, text.YEAR, year, sentence))]


def _number_question(article: text.Article, subject: str, sentence: str,
                     rest: str) -> List[Question]:
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
      found = text.COPULA.search(" " + rest)
      copula = found.group(1) if found else "is"
    copula = {"are": "is", "were": "was"}.get(copula, copula)
    question = f"How many {noun} {copula} {subject} {match.group(4)}?"
  return [Question("number", question, number, sentence,
                   text.Fact(article.title, text.NUMBER, number, sentence))]
