"""TriviaQA (open-domain QA) with RAG (paper §3.1): question -> short answer, scored by exact
match against the answer and its aliases.

    python -m rag_jax.train --config experiments/tqa.py --workdir runs/tqa
    python -m rag_jax.evaluate --config experiments/tqa.py --workdir runs/tqa --split test
    python -m rag_jax.train --config experiments/tqa.py:tiny --workdir /tmp/tqa-tiny

As experiments/nq.py: BART-large and DPR's NQ question encoder over psgs_w100, k = 5 in
training; greedy decoding at test time, RAG-Token over 15 passages, RAG-Sequence over 50 with
thorough decoding. Test figures (Table 1, the open-domain test set; the paper also reports the
Wikipedia test set, 66.1 / 68.0): RAG-Token 55.2, RAG-Sequence 56.8 EM. The splits are DPR's:
train 78,785, dev 8,837, test 11,313 (TriviaQA's unfiltered dev set).

The data: DPR's files in data/dpr: biencoder-trivia-train.json, biencoder-trivia-dev.json and
trivia-test.qa.csv. From tfds instead: `--config.data.kind=trivia_qa
--config.data.path=~/tensorflow_datasets --config.data.eval_split=validation
--config.data.test_split=validation` (unfiltered.nocontext). `:tiny` reads DPR's QA csv files
in rag_jax/data/tiny/qa. Ablation switches as in experiments/nq.py.
"""

from rag_jax.configs import tasks


def get_config(arg: str = ""):
  return tasks.qa("tqa", arg, dpr="trivia", tiny="trivia-{split}.qa.csv",
                  paper={"token": {"exact_match": 55.2}, "sequence": {"exact_match": 56.8}})
