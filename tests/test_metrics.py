"""rag_jax.evaluate.metrics against hand-computed cases: SQuAD normalisation's edge cases, EM and F1,
CuratedTrec regexes (DrQA's match for predictions, DPR's search for passages), BLEU-1 and
ROUGE-L equal to sacrebleu and rouge-score called directly, Q-BLEU on the example of its
authors' tests (and on hand-computed ones), label accuracy, recall@k and answer-in-top-k."""

import math

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from rag_jax.evaluate import metrics

# ------------------------------------------------------------------------------------------
# SQuAD: normalisation, exact match, F1.


@pytest.mark.parametrize("text, normalized", [
    ("The Beatles", "beatles"),
    ("  a   Tale of\tTwo\nCities ", "tale of two cities"),  # articles, whitespace
    ("An apple a day", "apple day"),
    ("the the THE", ""),
    ("Theatre, Anna and Thea", "theatre anna and thea"),  # articles only as words
    ("U.S.A.", "usa"),  # punctuation goes, no space
    ("rock-'n'-roll!", "rocknroll"),
    ("Wilhelm Conrad RÖNTGEN", "wilhelm conrad röntgen"),  # unicode lowercases
    ("Thé Ångström", "thé ångström"),  # "thé" is not an article
    ("“Dublin” – Ireland", "“dublin” – ireland"),  # non-ASCII punctuation stays
    ("New\u00a0York\u2003City", "new york city"),  # unicode whitespace folds
    ("", ""),
])
def test_normalize_answer(text, normalized):
  assert metrics.normalize_answer(text) == normalized


def test_exact_match():
  assert metrics.exact_match_score("the Beatles!", ["Beatles"]) == 1.0
  assert metrics.exact_match_score("Beetles", ["Beatles"]) == 0.0
  assert metrics.exact_match_score("The Fab Four", ["Beatles", "the fab four"]) == 1.0  # max
  # Two answers that normalise to nothing match each other.
  assert metrics.exact_match_score("a", ["the"]) == 1.0
  assert metrics.exact_match(["Paris", "Lyon", "the Seine", "Rhone"], [
      ["Paris"], ["Marseille"], ["Seine", "River Seine"], ["Rhône"]]) == 50.0
  # A bare string is one answer, not a sequence of one-letter answers.
  assert metrics.exact_match(["P"], ["Paris"]) == 0.0
  assert metrics.exact_match(["Paris"], ["Paris"]) == 100.0


def test_f1():
  # Normalised: [cat, sat, on, mat] against [cat, on, mat]: P 3/4, R 1.
  assert metrics.f1_score("The cat sat on the mat.", ["a cat on a mat"]) == pytest.approx(6 / 7)
  # Counts are clipped: one "paris" in the answer.
  assert metrics.f1_score("paris paris paris", ["Paris"]) == pytest.approx(0.5)
  assert metrics.f1_score("London", ["Paris"]) == 0.0
  assert metrics.f1_score("Paris France", ["London", "Paris"]) == pytest.approx(2 / 3)  # max
  # SQuAD v1.1: nothing left on either side is F1 0 (EM 1, above).
  assert metrics.f1_score("the", ["a"]) == 0.0
  assert metrics.f1(["The cat sat on the mat.", "Paris"], [["a cat on a mat"], ["Paris"]]) == (
      pytest.approx(100 * (6 / 7 + 1) / 2))


def test_corpus_functions_check_their_inputs():
  with pytest.raises(ValueError, match="2 predictions but 1 references"):
    metrics.exact_match(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="no predictions"):
    metrics.f1([], [])
  with pytest.raises(ValueError, match="an example has no reference"):
    metrics.bleu1(["a"], [[]])
  with pytest.raises(ValueError, match="1 predictions but 2 labels"):
    metrics.label_accuracy(["true"], ["true", "false"])


# ------------------------------------------------------------------------------------------
# CuratedTrec regexes.


@pytest.mark.parametrize("prediction, patterns, score", [
    ("Ronald Reagan", [r"(Ronald\s+(Wilson\s+)?)?Reagan"], 1.0),
    ("REAGAN", [r"(Ronald\s+(Wilson\s+)?)?Reagan"], 1.0),  # case-insensitive
    ("Reagan's", ["Reagan"], 1.0),  # need not end there
    ("Ronald Reagan", ["Reagan"], 0.0),  # must start there
    ("5,280 feet", ["5,?280"], 1.0),
    ("5280", ["5,?280"], 1.0),
    ("528", ["5,?280"], 0.0),
    ("1912", ["April\\s+(14|15),?\\s+1912", "1912"], 1.0),  # max over patterns
    ("Dublin", ["(Dublin"], 0.0),  # bad pattern: no match
    ("Dublin", ["(Dublin", "dublin"], 1.0),
])
def test_regex_match_score(prediction, patterns, score):
  assert metrics.regex_match_score(prediction, patterns) == score


def test_regex_match_corpus_and_passages():
  assert metrics.regex_match(["Nixon", "Ford", "5280", "1911"],
                             [[r"(Richard\s+)?Nixon"], ["Carter"], ["5,?280"], ["1912"]]) == 50.0
  # Passages: DPR's search anywhere, after NFD normalisation of both sides.
  passage = "Ronald Reagan was the 40th president of the United States."
  assert metrics.has_answer(passage, ["Reagan"], regex=True)
  assert metrics.has_answer(passage, ["40th\\s+PRESIDENT"], regex=True)
  assert not metrics.has_answer(passage, ["Carter", "(Reagan"], regex=True)
  decomposed = "Wilhelm Ro\u0308ntgen won the first Nobel Prize in Physics."
  assert metrics.has_answer(decomposed, ["R\u00f6ntgen"], regex=True)
  assert metrics.has_answer("R\u00f6ntgen rays", ["Ro\u0308ntgen"], regex=True)


# ------------------------------------------------------------------------------------------
# BLEU-1 (sacrebleu) and ROUGE-L (rouge-score).

_PREDICTIONS = ["The cat sat on the mat.", "A corporation is a company.", "the cat"]
_REFERENCES = [["The cat is on the mat."],
               ["A corporation is a company or group of people.",
                "Corporations are legal entities."],
               ["the cat sat on the mat"]]


def test_bleu1_hand_computed():
  # the, cat, on, the, mat match of [the cat sat on the mat] (13a splits off "."): 6/7.
  assert metrics.bleu1(["the cat sat on the mat."], [["the cat is on the mat."]]) == (
      pytest.approx(100 * 6 / 7))
  # All 2 words match, brevity penalty exp(1 - 6/2).
  assert metrics.bleu1(["the cat"], [["the cat sat on the mat"]]) == (
      pytest.approx(100 * math.exp(-2)))
  # Case counts: sacrebleu's default is case-sensitive.
  assert metrics.bleu1(["The Cat"], [["the cat"]]) == 0.0


def test_bleu1_is_sacrebleus():
  streams = [[r[0] for r in _REFERENCES], [None, _REFERENCES[1][1], None]]
  direct = BLEU(max_ngram_order=1).corpus_score(_PREDICTIONS, streams).score
  assert metrics.bleu1(_PREDICTIONS, _REFERENCES) == direct
  assert 0 < direct < 100
  # The second reference counts: without it the score differs.
  assert metrics.bleu1(_PREDICTIONS, [r[:1] for r in _REFERENCES]) != direct


def test_rouge_l_hand_computed_and_is_rouge_scores():
  # LCS of [the cat sat on the mat] and [the cat is on the mat] is 5 of 6 words each way.
  assert metrics.rouge_l(["the cat sat on the mat"], [["the cat is on the mat"]]) == (
      pytest.approx(100 * 5 / 6))
  scorer = rouge_scorer.RougeScorer(["rougeL"])
  direct = [max(scorer.score(r, p)["rougeL"].fmeasure for r in refs)
            for p, refs in zip(_PREDICTIONS, _REFERENCES)]
  assert metrics.rouge_l(_PREDICTIONS, _REFERENCES) == pytest.approx(100 * sum(direct) / 3)
  assert metrics.rouge_l(["The CAT, sat!"], ["the cat sat"]) == pytest.approx(100.0)


# ------------------------------------------------------------------------------------------
# Q-BLEU (Nema & Khapra, 2018).

_HYP, _REF = "Is this a great question?", "Is this a good question?"


def test_q_bleu_on_the_authors_example():
  # Their tests/test_answerability_score.py: Bleu_3 with ner 0.6, qt 0.2, re 0.1, delta 0.7
  # gives 0.678 (and an n-gram score of 0.511).
  assert metrics.q_bleu_score(_HYP, _REF, ngram_order=3) == pytest.approx(0.678, abs=5e-4)
  assert metrics.q_bleu_score(_HYP, _REF, delta=0.0, ngram_order=3) == pytest.approx(
      0.511, abs=5e-4)
  # By hand: relevant [great question] vs [good question] F 1/2, entities [is] F 1, no
  # question type 0, function words [is this a] F 1: answerability 0.05 + 0.6 + 0 + 0.1.
  assert metrics.q_bleu_score(_HYP, _REF, delta=1.0) == pytest.approx(0.75)
  # Q-BLEU-1: BLEU-1 4/5.
  assert metrics.q_bleu_score(_HYP, _REF) == pytest.approx(0.7 * 0.75 + 0.3 * 0.8)
  assert metrics.q_bleu1([_HYP], [[_REF]]) == pytest.approx(76.5)


def test_q_bleu_hand_computed():
  # Question type [What river] / [Which river]: F 1/2; relevant [flows], entities [paris] and
  # function words [through] agree; BLEU-1 4/5.
  score = metrics.q_bleu_score("What river flows through Paris?",
                               "Which river flows through Paris?")
  assert score == pytest.approx(0.7 * (0.1 + 0.6 + 0.2 * 0.5 + 0.1) + 0.3 * 0.8)
  # A Jeopardy clue has no question word: that component is empty on both sides and scores
  # 0 in their code, so even a perfect copy scores 0.7 * 0.8 + 0.3.
  clue = "This peak was named for a British surveyor general of India"
  assert metrics.q_bleu_score(clue, clue) == pytest.approx(0.86)
  # Entities weigh most: the wrong country costs more than a wrong common word.
  wrong_entity = metrics.q_bleu_score(clue.replace("India", "Nepal"), clue)
  wrong_word = metrics.q_bleu_score(clue.replace("peak", "hill"), clue)
  assert wrong_entity < wrong_word < 0.86
  # The best of several references; the corpus mean as a percentage.
  assert metrics.q_bleu_score(_HYP, [clue, _HYP]) == pytest.approx(0.7 * 0.8 + 0.3)
  assert metrics.q_bleu1([_HYP, clue], [_REF, clue]) == pytest.approx(100 * (0.765 + 0.86) / 2)


def test_q_bleu_tokenizes_like_ptb():
  # The n-gram term alone (delta 0): lowercased, PTB punctuation tokens (quotes, brackets,
  # "?") dropped, "'s" split off.
  assert metrics.q_bleu_score('Who wrote "Hamlet" (the play)?', "who wrote hamlet the play",
                              delta=0.0) == pytest.approx(1.0)
  assert metrics.q_bleu_score("Who is Shakespeare's wife?", "who is shakespeare 's wife",
                              delta=0.0) == pytest.approx(1.0)
  # The components are cut from the raw words first, as theirs: a quoted name is no entity.
  assert metrics.q_bleu_score('Who wrote "Hamlet"?', "Who wrote Hamlet?") < 1 - 0.7 * 0.6
  assert metrics.q_bleu_score("", _REF) == 0.0


# ------------------------------------------------------------------------------------------
# FEVER label accuracy and retrieval.


def test_label_accuracy():
  assert metrics.label_accuracy(["true", " false", "unknown"], ["true", "false", "true"]) == (
      pytest.approx(200 / 3))
  assert metrics.label_accuracy(["SUPPORTS"], ["REFUTES"]) == 0.0


def test_recall_at_k():
  retrieved = [["Paris", "Lyon", "France"], ["Seine", "Loire"], ["Nice"]]
  gold = [["France", "French Republic"], ["Rhine"], []]  # the third has none: left out
  assert metrics.recall_at_k(retrieved, gold, 2) == 0.0
  assert metrics.recall_at_k(retrieved, gold, 3) == 50.0
  assert metrics.recall_at_k(retrieved, [["Lyon"], ["Loire"], ["Nice"]], 1) == pytest.approx(
      100 / 3)
  with pytest.raises(ValueError, match="no example has a gold title"):
    metrics.recall_at_k(retrieved, [[], [], []], 5)
  with pytest.raises(ValueError, match="k=0"):
    metrics.recall_at_k(retrieved, gold, 0)


def test_has_answer_and_answer_in_top_k():
  passage = ('"Does He Love You" is a song recorded as a duet by American country music '
             "artists Reba McEntire and Linda Davis.")
  assert metrics.has_answer(passage, ["linda davis"])
  assert metrics.has_answer(passage, ["Kenny Rogers", "the Reba McEntire"])  # normalised
  assert not metrics.has_answer(passage, ["art"])   # whole words only: not in "artists"
  assert not metrics.has_answer(passage, ["the"])   # nothing left to find
  assert metrics.has_answer("It was released on May 18 2018.", ["May 18, 2018"])
  passages = [["Paris is in France.", "The Seine flows through Paris."],
              ["Lyon is on the Rhône.", "Marseille is a port."]]
  assert metrics.answer_in_top_k(passages, [["Seine"], ["Marseille"]], 1) == 0.0
  assert metrics.answer_in_top_k(passages, [["Seine"], ["Marseille"]], 2) == 100.0
  assert metrics.answer_in_top_k(passages, [["seine"], ["L[yi]on"]], 1, regex=True) == 50.0
