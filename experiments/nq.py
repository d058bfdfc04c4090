"""Natural Questions (open-domain QA) with RAG (paper §3.1): question -> short answer, scored by
exact match.

    python -m rag_jax.train --config experiments/nq.py --workdir runs/nq
    python -m rag_jax.evaluate --config experiments/nq.py --workdir runs/nq --split test
    python -m rag_jax.train --config experiments/nq.py --config.rag.kind=sequence --workdir runs/nq-seq
    python -m rag_jax.train --config experiments/nq.py:tiny --workdir /tmp/nq-tiny
    python -m rag_jax.evaluate --config experiments/nq.py:tiny --workdir /tmp/nq-tiny
    python -m rag_jax.train --config experiments/nq.py:wiki --workdir /tmp/nq-wiki

From the paper: BART-large generator and DPR's NQ question encoder against the 21M-passage
psgs_w100 index, both trained jointly (document encoder and index frozen), k = 5 retrieved
passages in training. At test time (appendix B) answers are decoded greedily, RAG-Token over
15 passages, RAG-Sequence over 50 with thorough decoding (`eval_paper`; `--config.rag.kind`
switches both). Exact match with SQuAD's normalisation, max over the gold answers; F1 and
DPR's answer-in-top-k beside it, and recall@k of the gold articles where the data names them
(DPR's retriever files). Test figures (Table 1): RAG-Token 44.1, RAG-Sequence 44.5 EM. The
paper's splits are DPR's: train 79,168, dev 8,757, test 3,610 (NQ-open's dev set).

Ablations (paper Table 6), as switches: `--config.retrieval.freeze_query_encoder=true`
(Frozen), `--config.retrieval.mode=bm25` (BM25 over the same passages, its scores as p(z|x)'s
logits), `--config.eval_k=N` (passages at test time).

The data: DPR's files (github.com/facebookresearch/DPR, `dpr/data/download_data.py`) in
data/dpr: biencoder-nq-train.json, biencoder-nq-dev.json and nq-test.qa.csv. NQ-open from
tfds instead: `--config.data.kind=nq_open --config.data.path=~/tensorflow_datasets
--config.data.eval_split=validation --config.data.test_split=validation`. `:tiny` reads
rag_jax/data/tiny/qa (DPR's retriever JSON over the made-up world of rag_jax/data/tiny/fever).

`:wiki` is the demo on the embedded Wikipedia (rag_jax.train.demo; the questions, each answered in
one article, from rag_jax.data.wiki): MiniLM + SmolLM2 (top 4 layers) trained with k = 3,
greedy decoding, against a closed-book SmolLM2 trained the same way, the query encoder's
recall before and after, and the hot swap (questions whose year, number or country changed).
"""

from rag_jax.configs import tasks


def get_config(arg: str = ""):
  return tasks.qa("nq", arg, dpr="nq", tiny="biencoder-nq-{split}.json",
                  paper={"token": {"exact_match": 44.1}, "sequence": {"exact_match": 44.5}},
                  wiki=dict(kind="dpr_qa", path="wiki-tasks:nq/{split}.json",
                            doc_sep="\n\nQuestion: ",
                            system_prompt="Answer in English, in a few words.",
                            max_target_length=16, eval_max_length=16,
                            max_test_examples=64))
