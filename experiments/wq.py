"""WebQuestions (open-domain QA) with RAG (paper §3.1), started from an NQ model as the paper
does for this small dataset: question -> short answer, scored by exact match.

    python -m rag_jax.train --config experiments/nq.py --workdir runs/nq      # first
    python -m rag_jax.train --config experiments/wq.py --workdir runs/wq      # init: runs/nq
    python -m rag_jax.evaluate --config experiments/wq.py --workdir runs/wq --split test
    python -m rag_jax.train --config experiments/wq.py --config.init=facebook/rag-token-nq --workdir runs/wq
    python -m rag_jax.train --config experiments/nq.py:tiny --workdir /tmp/nq-tiny
    python -m rag_jax.train --config experiments/wq.py:tiny --config.init=/tmp/nq-tiny --workdir /tmp/wq-tiny

`init` names the NQ run (its workdir; or an HF RAG checkpoint trained on NQ): its params start
this run, with a fresh optimizer. Otherwise as experiments/nq.py: BART-large and DPR's NQ
question encoder over psgs_w100, k = 5 in training; greedy decoding at test time, RAG-Token
over 15 passages, RAG-Sequence over 50 with thorough decoding. Test figures (Table 1):
RAG-Token 45.5, RAG-Sequence 45.2 EM. The splits are DPR's: train 3,417, dev 361, test 2,032.

The data: DPR's files in data/dpr: biencoder-webquestions-train.json,
biencoder-webquestions-dev.json and webquestions-test.qa.csv; from tfds instead:
`--config.data.kind=web_questions --config.data.path=~/tensorflow_datasets` with its splits.
`:tiny` reads DPR's QA csv files in rag_jax/data/tiny/qa (the tiny NQ's vocabulary, so the tiny
NQ checkpoint fits) and starts from nothing unless `--config.init` names one.
"""

from rag_jax.configs import tasks


def get_config(arg: str = ""):
  return tasks.qa("wq", arg, dpr="webquestions", tiny="webquestions-{split}.qa.csv",
                  paper={"token": {"exact_match": 45.5}, "sequence": {"exact_match": 45.2}},
                  init="runs/nq")
