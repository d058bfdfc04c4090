"""The paper's metrics (Lewis et al., 2020, section 3), each a plain function of predictions and
references.

    from rag_jax.evaluate import metrics
    metrics.exact_match(["Paris"], [["Paris", "City of Paris"]])  # 100.0

Corpus-level functions (`exact_match`, `f1`, `regex_match`, `bleu1`, `rouge_l`, `q_bleu1`,
`label_accuracy`, `recall_at_k`, `answer_in_top_k`) return percentages, as the paper's tables,
SQuAD's script and sacrebleu do; references are one sequence of gold strings per prediction
(a bare string is taken as one gold), and a prediction with no gold is an error rather than a
silent zero. The per-example functions (`exact_match_score`, `f1_score`, `regex_match_score`,
`q_bleu_score`, `has_answer`) return fractions, for per-example reports.

Where each comes from:
  * Exact match and F1: SQuAD v1.1's official script (the one DPR and RAG use): lowercase,
    drop ASCII punctuation (`string.punctuation`), drop the words a/an/the, fold whitespace;
    max over the gold answers. As in that script, non-ASCII punctuation stays (the hyphen
    goes, an en dash does not), and F1 of two answers that normalise to nothing is 0 (v1.1;
    v2.0 would say 1).
  * Regex match (CuratedTrec, whose answers are regular expressions): DrQA's
    `regex_match_score`, which DPR's evaluation inherits: `re.match` with IGNORECASE, UNICODE
    and MULTILINE, so the pattern must match at the start of the prediction but may stop before
    its end ("Reagan" matches "Reagan's" but not "Ronald Reagan"); a pattern that does not
    compile matches nothing. For passages (`has_answer(..., regex=True)`) it is DPR's
    `regex_match` instead: `search` anywhere, after NFD normalisation of both. Python's `re`
    (DPR imports the `regex` package, which accepts a few more constructs).
  * BLEU-1: sacrebleu's corpus BLEU with `max_ngram_order=1` and its defaults otherwise (13a
    tokenizer, case-sensitive; its `exp` smoothing never applies at order 1, since a corpus
    with no matching word scores 0).
  * ROUGE-L: rouge-score's `rougeL` F-measure (its tokenizer lowercases and keeps only
    [a-z0-9] runs, so non-ASCII letters do not count), max over the references, averaged.
  * Q-BLEU-1: Nema & Khapra (2018), as their `answerability_score.py`
    (github.com/PrekshaNema25/Answerability-Metric) computes it; see `q_bleu_score`.
  * Label accuracy (FEVER): exact string equality after stripping surrounding whitespace.
  * Recall@k: the share of examples with a gold article among the titles of the top k
    passages (examples without gold titles, such as FEVER's NOT ENOUGH INFO, are left out).
  * Answer-in-top-k: the share of examples whose top k passages contain a gold answer: the
    SQuAD-normalised answer as a run of whole words of the SQuAD-normalised passage. DPR's
    `has_answer` matches tokens of its own tokenizer, keeping punctuation tokens and articles;
    KILT's matches substrings, even inside words. Here "the" and a trailing "," cannot make or
    break a match, and "art" is not found in "party".
"""

import collections
import re
import string
import unicodedata
from typing import Callable, List, Sequence, Tuple, Union

from sacrebleu.metrics import BLEU

Golds = Union[str, Sequence[str]]

__all__ = [
    "answer_in_top_k", "bleu1", "exact_match", "exact_match_score", "f1", "f1_score",
    "has_answer", "label_accuracy", "normalize_answer", "q_bleu1", "q_bleu_score",
    "recall_at_k", "regex_match", "regex_match_score", "rouge_l",
]


# ------------------------------------------------------------------------------------------
# SQuAD: exact match and F1.

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
  """SQuAD v1.1's normalisation: lowercase, drop ASCII punctuation, drop a/an/the, fold
  whitespace. `"The  Beatles!"` -> `"beatles"`."""
  text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction: str, answers: Golds) -> float:
  """1.0 when the prediction equals one of the answers after `normalize_answer`, else 0.0."""
  prediction = normalize_answer(prediction)
  return max(float(prediction == normalize_answer(a)) for a in _golds(answers))


def f1_score(prediction: str, answers: Golds) -> float:
  """SQuAD's word-overlap F1 (bag of normalised words), max over the answers."""
  return max(_f1(prediction, a) for a in _golds(answers))


def exact_match(predictions: Sequence[str], references: Sequence[Golds]) -> float:
  """Percentage of predictions that exactly match one of their gold answers (SQuAD)."""
  return _mean_percent(exact_match_score, predictions, references)


def f1(predictions: Sequence[str], references: Sequence[Golds]) -> float:
  """Mean SQuAD F1 (max over gold answers) as a percentage."""
  return _mean_percent(f1_score, predictions, references)


def _f1(prediction: str, answer: str) -> float:
  predicted = normalize_answer(prediction).split()
  gold = normalize_answer(answer).split()
  same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(gold)
  return 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------
# CuratedTrec: regular expressions.

_REGEX_FLAGS = re.IGNORECASE | re.UNICODE | re.MULTILINE


def regex_match_score(prediction: str, patterns: Golds) -> float:
  """1.0 when one of the patterns matches at the start of the prediction (DrQA's `re.match`,
  case-insensitive), else 0.0; a pattern that does not compile matches nothing."""
  compiled = [_compiled(p) for p in _golds(patterns)]
  return float(any(c is not None and c.match(prediction) is not None for c in compiled))


def regex_match(predictions: Sequence[str], references: Sequence[Golds]) -> float:
  """Percentage of predictions matched by one of their patterns (`regex_match_score`)."""
  return _mean_percent(regex_match_score, predictions, references)


def _compiled(pattern: str):
  try:
    return re.compile(pattern, _REGEX_FLAGS)
  except re.error:
    return None


# ------------------------------------------------------------------------------------------
# MS MARCO: BLEU-1 (sacrebleu) and ROUGE-L (rouge-score).


def bleu1(predictions: Sequence[str], references: Sequence[Golds]) -> float:
  """Corpus BLEU-1: sacrebleu's `BLEU(max_ngram_order=1).corpus_score`, every reference of an
  example counting (clipped counts, closest reference length), as a percentage."""
  predictions, golds = _checked(predictions, references)
  # sacrebleu takes reference streams: stream j holds every example's j-th reference, None
  # where an example has fewer.
  width = max(len(g) for g in golds)
  streams = [[g[j] if j < len(g) else None for g in golds] for j in range(width)]
  return BLEU(max_ngram_order=1).corpus_score(list(predictions), streams).score


def rouge_l(predictions: Sequence[str], references: Sequence[Golds]) -> float:
  """Mean ROUGE-L F-measure (rouge-score's `rougeL`, max over an example's references) as a
  percentage."""
  from rouge_score import rouge_scorer  # pylint: disable=g-import-not-at-top
  predictions, golds = _checked(predictions, references)
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  total = sum(scorer.score_multi(list(g), p)["rougeL"].fmeasure
              for p, g in zip(predictions, golds))
  return 100.0 * total / len(predictions)


# ------------------------------------------------------------------------------------------
# Jeopardy question generation: Q-BLEU-1 (Nema & Khapra, 2018).

# answerability_score.py's function words (an NLTK English stop-word list less the question
# words, which have their own component), sorted here.
_STOP_WORDS = frozenset("""
    a about above after again against all am an and any are as at be because been before being
    below between both but by can did do does doing don down during each few for from further
    had has have having he her here hers herself him himself his i if in into is it its itself
    just me more most my myself no nor not now of off on once only or other our ours ourselves
    out over own s same she should so some such t than that the their theirs them themselves
    then there these they this those through to too under until up very was we were while will
    with you your yours yourself yourselves""".split())
# Matched as written or lowercased, as there: "What" and "what", but not "WHAT".
_QUESTION_WORDS = frozenset(w for word in ("What", "Which", "Why", "Who", "Whom", "Whose",
                                           "Where", "When", "How") for w in (word, word.lower()))
# The punctuation tokens their tokenizer wrapper drops after PTB tokenization.
_PTB_PUNCTUATION = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".",
                              "?", "!", ",", ":", "-", "--", "...", ";"])


def q_bleu_score(prediction: str, reference: Golds, *, ner_weight: float = 0.6,
                 qt_weight: float = 0.2, re_weight: float = 0.1, delta: float = 0.7,
                 ngram_order: int = 1) -> float:
  """Q-BLEU of one generated question against its reference question(s), in [0, 1].

  As `answerability_score.py` computes it: each question is split on whitespace into four
  components, on the raw text (case and punctuation still attached):
    * question type: the question words (What, which, ...) and the word after what/which;
    * named entities: the capitalised words, less a leading question word (so a sentence's
      capitalised first word counts as an entity: their heuristic, not a tagger);
    * relevant words: what is left that is neither capitalised, a function word, nor a
      question-type word;
    * function words: the words in their stop-word list, lowercased.
  Each component is then tokenized (PTB-style, lowercased, punctuation tokens dropped) and
  scored by the F-measure of its BLEU-1 one way (precision) and the other (recall); a
  component empty on either side scores 0, as theirs does. Then
    answerability = re_weight*relevant + ner_weight*entities + qt_weight*type
                    + (1 - re_weight - ner_weight - qt_weight)*function words
    Q-BLEU = delta*answerability + (1 - delta)*BLEU-n(whole question)
  with BLEU-n their per-sentence BLEU (no smoothing) at `ngram_order` (1 for Q-BLEU-1).
  Every BLEU here is sacrebleu's (a one-sentence corpus, whitespace tokens), which equals
  their coco-caption BLEU at order 1 but for its 1e-15 terms; at higher orders theirs also
  gives a question shorter than n words a little credit ((1e-6)^(1/n) of it) where sacrebleu
  gives 0. The defaults are the weights of their README; the RAG paper does not give its own.
  With several references, the best one counts (theirs takes one).

  Tokenizer: theirs runs Stanford CoreNLP 3.4.1's PTBTokenizer (Java); this uses NLTK's
  `TreebankWordTokenizer` (the same Penn Treebank rules, in Python). Known differences:
  Stanford's also Americanizes spellings ("colour" -> "color"), turns Unicode quotes and
  dashes into PTB's ASCII ones (which are then dropped as punctuation) and splits periods
  inside a line at sentence ends; NLTK splits only a line-final period and leaves Unicode
  punctuation as tokens of their own.

  Args:
    prediction: the generated question.
    reference: the gold question, or several.
    ner_weight, qt_weight, re_weight: the weights of named entities, question type and
      relevant words; function words get what is left of 1.
    delta: the weight of answerability against the n-gram score.
    ngram_order: the BLEU order of the fluency term (1: Q-BLEU-1; their test uses 3).
  """
  hyp = _q_components(prediction)
  best = 0.0
  for gold in _golds(reference):
    ref = _q_components(gold)
    relevant, entities, qtype, function = (_bleu1_f(h, r) for h, r in zip(hyp[:4], ref[:4]))
    answerability = (re_weight * relevant + ner_weight * entities + qt_weight * qtype
                     + (1 - re_weight - ner_weight - qt_weight) * function)
    fluency = _sentence_bleu(hyp[4], ref[4], ngram_order)
    best = max(best, delta * answerability + (1 - delta) * fluency)
  return best


def q_bleu1(predictions: Sequence[str], references: Sequence[Golds], **weights) -> float:
  """Mean Q-BLEU-1 (`q_bleu_score` with BLEU-1) as a percentage; `weights` as there."""
  weights.setdefault("ngram_order", 1)
  return _mean_percent(lambda p, g: q_bleu_score(p, g, **weights), predictions, references)


def _q_components(question: str) -> Tuple[str, ...]:
  """(relevant words, named entities, question type, function words, whole question), each
  PTB-tokenized into space-separated lowercase tokens."""
  words = question.split()
  qtype = []
  for i, word in enumerate(words):
    if word in _QUESTION_WORDS:
      qtype.append(word)
      if word.lower() in ("what", "which") and i + 1 < len(words):
        qtype.append(words[i + 1])
  relevant = [w for w in words if w not in qtype and not w[0].isupper() and w not in _STOP_WORDS]
  named = words[1:] if words and words[0].lower() in _QUESTION_WORDS else words
  entities = [w for w in named if w[0].isupper()]
  function = [w.lower() for w in words if w.lower() in _STOP_WORDS]
  return tuple(_ptb(" ".join(part)) for part in (relevant, entities, qtype, function, words))


def _ptb(text: str) -> str:
  from nltk.tokenize import TreebankWordTokenizer  # pylint: disable=g-import-not-at-top
  tokens = TreebankWordTokenizer().tokenize(text.lower(), convert_parentheses=True)
  return " ".join(t for t in tokens if t not in _PTB_PUNCTUATION)


def _sentence_bleu(hypothesis: str, reference: str, order: int) -> float:
  """Their per-sentence BLEU-n in [0, 1] on whitespace tokens; 0 when either side is empty."""
  if not hypothesis or not reference:
    return 0.0
  # A one-sentence corpus: sentence BLEU without effective order or smoothing, as theirs.
  bleu = BLEU(max_ngram_order=order, tokenize="none", smooth_method="none")
  return bleu.corpus_score([hypothesis], [[reference]]).score / 100.0


def _bleu1_f(hypothesis: str, reference: str) -> float:
  precision = _sentence_bleu(hypothesis, reference, 1)
  recall = _sentence_bleu(reference, hypothesis, 1)
  return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------
# FEVER and retrieval.


def label_accuracy(predictions: Sequence[str], labels: Sequence[str]) -> float:
  """Percentage of predictions equal to their label (FEVER's 3-way or 2-way accuracy; map
  generated label words back to labels first, or compare words with words)."""
  if len(predictions) != len(labels):
    raise ValueError(f"{len(predictions)} predictions but {len(labels)} labels")
  if not predictions:
    raise ValueError("no predictions")
  right = sum(p.strip() == l.strip() for p, l in zip(predictions, labels))
  return 100.0 * right / len(predictions)


def has_answer(passage: str, answers: Golds, *, regex: bool = False) -> bool:
  """Whether the passage holds one of the answers.

  Args:
    passage: the passage text (add its title first if titles should count).
    answers: gold answers, or CuratedTrec's patterns when `regex`.
    regex: search each pattern anywhere in the passage, case-insensitively, after NFD
      normalisation of both (DPR's `regex_match`); otherwise look for the SQuAD-normalised
      answer as a run of whole words of the SQuAD-normalised passage (an answer that
      normalises to nothing, such as "the", is never found).
  """
  if regex:
    text = unicodedata.normalize("NFD", passage)
    for pattern in _golds(answers):
      compiled = _compiled(unicodedata.normalize("NFD", pattern))
      if compiled is not None and compiled.search(text) is not None:
        return True
    return False
  words = normalize_answer(passage).split()
  for answer in _golds(answers):
    run = normalize_answer(answer).split()
    if run and any(words[i:i + len(run)] == run for i in range(len(words) - len(run) + 1)):
      return True
  return False


def recall_at_k(retrieved_titles: Sequence[Sequence[str]], gold_titles: Sequence[Sequence[str]],
                k: int) -> float:
  """Percentage of examples with a gold article among the titles of their top `k` passages.

  Args:
    retrieved_titles: per example, the titles of its retrieved passages, best first.
    gold_titles: per example, its gold titles (`Example.gold_titles`); examples with none
      are left out of the count, since no retrieval could find them.
    k: how many of the top passages count.

  Raises:
    ValueError: mismatched lengths, k < 1, or no example with a gold title.
  """
  if len(retrieved_titles) != len(gold_titles):
    raise ValueError(f"{len(retrieved_titles)} retrieval results but {len(gold_titles)} "
                     f"gold title lists")
  _check_k(k)
  scored = [(set(g), list(r)[:k]) for r, g in zip(retrieved_titles, gold_titles) if len(g)]
  if not scored:
    raise ValueError("no example has a gold title")
  hits = sum(any(t in gold for t in top) for gold, top in scored)
  return 100.0 * hits / len(scored)


def answer_in_top_k(retrieved_passages: Sequence[Sequence[str]], references: Sequence[Golds],
                    k: int, *, regex: bool = False) -> float:
  """Percentage of examples with a gold answer in one of their top `k` passages
  (`has_answer`; DPR's top-k retrieval accuracy).

  Args:
    retrieved_passages: per example, its retrieved passages' texts, best first.
    references: per example, its gold answers (CuratedTrec: patterns, with `regex`).
    k: how many of the top passages count.
    regex: the answers are regular expressions (see `has_answer`).
  """
  if len(retrieved_passages) != len(references):
    raise ValueError(f"{len(retrieved_passages)} retrieval results but {len(references)} "
                     f"references")
  _check_k(k)

  def found(passages: Sequence[str], golds: Tuple[str, ...]) -> float:
    return float(any(has_answer(p, golds, regex=regex) for p in list(passages)[:k]))

  return _mean_percent(found, retrieved_passages, references)


def _check_k(k: int) -> None:
  if k < 1:
    raise ValueError(f"k={k}; expected at least 1")


# ------------------------------------------------------------------------------------------
# Shared.


def _golds(answers: Golds) -> Tuple[str, ...]:
  # A bare string is one answer, not a sequence of one-letter answers.
  golds = (answers,) if isinstance(answers, str) else tuple(answers)
  if not golds:
    raise ValueError("an example has no reference")
  return golds


def _checked(predictions: Sequence[str],
             references: Sequence[Golds]) -> Tuple[Sequence[str], List[Tuple[str, ...]]]:
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
  if not predictions:
    raise ValueError("no predictions")
  return predictions, [_golds(r) for r in references]


def _mean_percent(score: Callable[..., float], predictions: Sequence,
                  references: Sequence[Golds]) -> float:
  predictions, golds = _checked(predictions, references)
  return 100.0 * sum(score(p, g) for p, g in zip(predictions, golds)) / len(predictions)
