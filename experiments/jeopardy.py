"""Jeopardy question generation with RAG (paper §3.3): an answer entity -> a Jeopardy clue about
it, on SearchQA's questions, scored by Q-BLEU-1 and BLEU-1.

    python -m rag_jax.train --config experiments/jeopardy.py --workdir runs/jeopardy
    python -m rag_jax.evaluate --config experiments/jeopardy.py --workdir runs/jeopardy --split test
    python -m rag_jax.train --config experiments/jeopardy.py:tiny --workdir /tmp/jeopardy-tiny
    python -m rag_jax.train --config experiments/jeopardy.py:wiki --workdir /tmp/jeopardy-wiki

From the paper: BART-large and DPR's NQ question encoder over psgs_w100, trained jointly; at
test time (appendix B) 10 passages, beam search with 4 beams, and fast decoding for
RAG-Sequence (`eval_paper`). Q-BLEU-1 is Nema & Khapra's answerability-weighted BLEU-1
(rag_jax.evaluate.metrics.q_bleu1, with a Python tokenizer where theirs is Java), BLEU-1 sacrebleu's.
Test figures (Table 2): RAG-Token 17.3 BLEU-1 / 22.2 Q-BLEU-1, RAG-Sequence 14.7 / 21.4. The
splits: SearchQA's, 100K train / 14K dev / 27K test. Training retrieves 10 passages too.

The data: {train,val,test}.source (the answers) and .target (the clues) in data/jeopardy, the
layout of HF's RAG example. `:tiny` reads rag_jax/data/tiny/qa/jeopardy (an article's title ->
a clue from one of its facts).

`:wiki` is the demo on the embedded Wikipedia (rag_jax.train.demo; the tasks: rag_jax.data.wiki):
an article's title -> "This {description} is ...", from its lead; MiniLM + SmolLM2 (top 4
layers) trained with k = 3, greedy decoding, against a closed-book SmolLM2 trained the same
way, and the hot swap (clues over an index whose facts changed).
"""

from rag_jax.configs import tasks
from rag_jax.data import tiny


def get_config(arg: str = ""):
  return tasks.config(
      "jeopardy", arg, data=dict(kind="jeopardy", path="data/jeopardy", eval_split="val"),
      tiny_data=dict(path=str(tiny.QA / "jeopardy"), eval_split="dev"),
      metrics=["q_bleu1", "bleu1"], eval_paper=tasks.GENERATION_DECODING, eval_num_beams=4,
      paper={"token": {"bleu1": 17.3, "q_bleu1": 22.2},
             "sequence": {"bleu1": 14.7, "q_bleu1": 21.4}},
      lengths=(40, 40), k=10,
      wiki=dict(kind="jeopardy", path="wiki-tasks:jeopardy", doc_sep="\n\nAnswer: ",
                system_prompt="Write a Jeopardy! clue whose answer is the one given.",
                max_target_length=40, eval_max_length=40,
                # Clues of up to 40 tokens are the slowest to decode: 32 test clues, and
                # the hot swap on the first 24 of its 42.
                max_test_examples=32, max_swapped_examples=24))
