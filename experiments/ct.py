"""CuratedTrec (open-domain QA) with RAG (paper §3.1), started from an NQ model as the paper does
for this small dataset: question -> short answer, scored by regular-expression match (its
answers are patterns).

    python -m rag_jax.train --config experiments/nq.py --workdir runs/nq      # first
    python -m rag_jax.train --config experiments/ct.py --workdir runs/ct      # init: runs/nq
    python -m rag_jax.evaluate --config experiments/ct.py --workdir runs/ct --split test
    python -m rag_jax.train --config experiments/ct.py:tiny --config.init=/tmp/nq-tiny --workdir /tmp/ct-tiny

Training targets, as the paper's appendix B makes them: for each question, the text its
patterns match most often in the top 1,000 passages the initial retriever finds
(`data.regex_target_passages`); with no match, the pattern's simplest expansion
(rag_jax.data.dpr.regex_target). Scored as DrQA and DPR score it: the pattern must match at
the start of the answer, case-insensitively (rag_jax.evaluate.metrics.regex_match). Otherwise as
experiments/wq.py: `init` names the NQ run; greedy decoding at test time, RAG-Token over 15
passages, RAG-Sequence over 50 with thorough decoding. Test figures (Table 1): RAG-Token 50.0,
RAG-Sequence 52.2. The splits are DPR's: train 1,125, dev 133, test 694.

The data: DPR's files in data/dpr: biencoder-curatedtrec-train.json,
biencoder-curatedtrec-dev.json and curatedtrec-test.qa.csv. `:tiny` reads DPR's QA csv files
in rag_jax/data/tiny/qa.
"""

from rag_jax.configs import tasks


def get_config(arg: str = ""):
  return tasks.qa("ct", arg, dpr="curatedtrec", tiny="curatedtrec-{split}.qa.csv",
                  paper={"token": {"regex_match": 50.0}, "sequence": {"regex_match": 52.2}},
                  kind="curatedtrec", metrics=["regex_match", "answer_in_top_k"],
                  init="runs/nq", regex_target_passages=1000)
