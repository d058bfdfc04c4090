"""FEVER fact verification with RAG (paper §3.4): joint fine-tuning of the query encoder and
the generator, document encoder and index frozen; each label is one output token.

    python -m rag_jax.train --config experiments/fever.py --workdir runs/fever3
    python -m rag_jax.train --config experiments/fever.py:2way --workdir runs/fever2
    python -m rag_jax.train --config experiments/fever.py:tiny --workdir /tmp/fever-tiny
    python -m rag_jax.train --config experiments/fever.py:wiki --workdir /tmp/fever-wiki
    python -m rag_jax.evaluate --config experiments/fever.py --workdir runs/fever3 --split test

No argument is the paper's FEVER-3 run. From the paper: BART-large generator, DPR's NQ
question encoder (`facebook/dpr-question_encoder-single-nq-base`) against its document
encoder's index of the 21M 100-word Wikipedia passages (psgs_w100), k = 5 retrieved
documents in training, RAG-Token / RAG-Sequence alike for a one-token output, labels as
single tokens, greedy decoding, scored by label accuracy. The paper's test figures (Table
2): 72.5 (3-way) and 89.5 (2-way). The paper is silent on the optimiser and the test-time k:
the optimiser is HF's RAG fine-tuning recipe (rag_jax/configs/tasks.py), and evaluation
retrieves the training k.

`:2way` drops NOT ENOUGH INFO (SUPPORTS / REFUTES only). `:tiny` trains a tiny random DPR +
BART (written under the workdir) on `rag_jax/data/tiny/fever`, a 48-passage corpus and a few
dozen claims in FEVER's own format: seconds on a CPU. `:wiki` is the demo on the embedded
Wikipedia (rag_jax.train.demo; claims from rag_jax.data.wiki): MiniLM + SmolLM2 (top 4 layers)
trained with k = 3, against a closed-book SmolLM2 trained the same way, the query encoder's
recall before and after, and the hot swap (claims whose evidence changed).

The real data: FEVER's `train.jsonl` / `shared_task_dev.jsonl` from fever.ai (or KILT's
`fever-train-kilt.jsonl` / `fever-dev-kilt.jsonl`), and DPR's `psgs_w100.tsv` (built into
an index once with `python -m rag_jax.index build --passages psgs_w100.tsv --encoder
facebook/dpr-ctx_encoder-single-nq-base --backend exact --out psgs_w100-idx`).
"""

from rag_jax.configs import tasks
from rag_jax.data import tiny

VARIANTS = ("", "2way", "tiny")  # and "wiki" (tasks.config adds it)
# The training k at test time too (the paper gives no other).
DECODING = {"token": {"k": 5, "decoding": "greedy"}, "sequence": {"k": 5, "decoding": "thorough"}}


def get_config(arg: str = ""):
  accuracy = {"label_accuracy": 89.5 if arg == "2way" else 72.5}
  c = tasks.config(
      "fever", arg, variants=VARIANTS,
      # A {split} pattern (or a directory holding {split}.jsonl), FEVER's official JSONL or
      # KILT's.
      data=dict(kind="fever", path="data/fever/{split}.jsonl", two_way=arg == "2way",
                # Each label's output; the trainer checks that each is one generator token.
                label_words={"SUPPORTS": "true", "REFUTES": "false",
                             "NOT ENOUGH INFO": "unknown"}),
      tiny_data=dict(path=str(tiny.FEVER / "{split}.jsonl"), test_split=""),
      metrics=["label_accuracy"], eval_paper=DECODING,
      paper={"token": accuracy, "sequence": accuracy},
      lengths=(8, 4), tiny_lengths=(8, 4), tiny_vocab=tiny.FEVER / "vocab.txt",
      wiki=dict(kind="fever", path="wiki-tasks:fever", doc_sep="\n\nClaim: ",
                system_prompt="Is the claim true, false, or unknown from the passage? "
                              "Answer in one word.",
                max_target_length=4, eval_max_length=4,
                # The first 96 test claims (32 of each label: the files interleave them),
                # and 24 of the 49 whose label the hot swap flips: the demo's time budget
                # (the figures: benchmarks/RESULTS.md).
                max_test_examples=96, max_swapped_examples=24,
                # One label token learns slowly at 1e-4, and at 1e-3 the query encoder
                # collapses to one passage for every claim: the generator's top layers at
                # 1e-3, the query encoder at 1e-5.
                learning_rate=1e-3, question_encoder_lr_scale=0.01))
  return c
