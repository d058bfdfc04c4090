"""MS MARCO NLG v2.1 (abstractive QA) with RAG (paper §3.2): question -> a whole-sentence answer
from retrieved Wikipedia passages (the supplied passages are not read), scored by BLEU-1 and
ROUGE-L.

    python -m rag_jax.train --config experiments/msmarco.py --workdir runs/msmarco
    python -m rag_jax.evaluate --config experiments/msmarco.py --workdir runs/msmarco
    python -m rag_jax.train --config experiments/msmarco.py:tiny --workdir /tmp/msmarco-tiny

From the paper: BART-large and DPR's NQ question encoder over psgs_w100, trained jointly; at
test time (appendix B) 10 passages, beam search with 4 beams, and fast decoding for
RAG-Sequence (`eval_paper`). BLEU-1 is sacrebleu's, ROUGE-L rouge-score's (rag_jax.evaluate.metrics).
Test figures (Table 2): RAG-Token 40.1 ROUGE-L / 41.5 BLEU-1, RAG-Sequence 40.8 / 44.2.
Training retrieves 10 passages too.

The data: the official train_v2.1.json, dev_v2.1.json and eval_v2.1_public.json (.gz or not)
in data/msmarco, read as the NLG task (questions with a well-formed answer, those answers the
targets; rag_jax/data/msmarco.py says how the paper's split sizes point to it). The test
split is the eval file, whose answers are hidden: evaluate writes its predictions and scores
only retrieval. `:tiny` reads the same three files in rag_jax/data/tiny/qa.
"""

from rag_jax.configs import tasks
from rag_jax.data import tiny


def get_config(arg: str = ""):
  return tasks.config(
      "msmarco", arg, data=dict(kind="msmarco", path="data/msmarco"),
      tiny_data=dict(path=str(tiny.QA)),
      metrics=["bleu1", "rouge_l"], eval_paper=tasks.GENERATION_DECODING, eval_num_beams=4,
      paper={"token": {"rouge_l": 40.1, "bleu1": 41.5},
             "sequence": {"rouge_l": 40.8, "bleu1": 44.2}},
      lengths=(64, 64), k=10)
