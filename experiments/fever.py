"""FEVER fact verification with RAG (paper §3.4): joint fine-tuning of the query encoder and
the generator, document encoder and index frozen; each label is one output token.

    python -m rag_jax.train --config experiments/fever.py --workdir runs/fever3
    python -m rag_jax.train --config experiments/fever.py:2way --workdir runs/fever2
    python -m rag_jax.train --config experiments/fever.py:tiny --workdir /tmp/fever-tiny

No argument is the paper's FEVER-3 run. From the paper: BART-large generator, DPR's NQ
question encoder (`facebook/dpr-question_encoder-single-nq-base`) against its document
encoder's index of the 21M 100-word Wikipedia passages (psgs_w100), k = 5 retrieved
documents in training, RAG-Token / RAG-Sequence alike for a one-token output, labels as
single tokens, greedy decoding. The paper is silent on the optimiser: these come from HF's
RAG fine-tuning recipe (examples/research_projects/rag): AdamW, learning rate 3e-5, 500
warmup steps then linear decay, max grad norm 0.1, label smoothing 0.1, weight decay 0.001,
max_combined_length 300.

`:2way` drops NOT ENOUGH INFO (SUPPORTS / REFUTES only). `:tiny` trains a tiny random DPR +
BART (written under the workdir) on `tests/data/fever_tiny`, a 48-passage corpus and a few
dozen claims in FEVER's own format: seconds on a CPU.

The real data: FEVER's `train.jsonl` / `shared_task_dev.jsonl` from fever.ai (or KILT's
`fever-train-kilt.jsonl` / `fever-dev-kilt.jsonl`), and DPR's `psgs_w100.tsv` (built into
an index once with `python -m rag_jax.index build --passages psgs_w100.tsv --encoder
facebook/dpr-ctx_encoder-single-nq-base --backend exact --out psgs_w100-idx`).
"""

import pathlib

import ml_collections

VARIANTS = ("", "2way", "tiny")
TINY_DATA = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "fever_tiny"


def get_config(arg: str = ""):
  if arg not in VARIANTS:
    raise ValueError(f"unknown config variant {arg!r} of experiments/fever.py; expected one of "
                     f"{[v for v in VARIANTS if v]} or none")
  c = ml_collections.ConfigDict()
  c.task = "fever"

  # Data: a {split} pattern (or a directory holding {split}.jsonl), FEVER's official JSONL or
  # KILT's.
  c.data = ml_collections.ConfigDict()
  c.data.kind = "fever"
  c.data.path = "data/fever/{split}.jsonl"
  c.data.train_split = "train"
  c.data.eval_split = "dev"
  c.data.two_way = arg == "2way"
  # Each label's output; the trainer checks that each is one generator token.
  c.data.label_words = {"SUPPORTS": "true", "REFUTES": "false", "NOT ENOUGH INFO": "unknown"}
  c.data.max_eval_examples = 0          # 0 = all

  # Model: a query encoder and a generator (directories, hub names or asset:NAME), or an HF
  # RAG checkpoint (`rag_checkpoint`, which then supplies both).
  c.model = ml_collections.ConfigDict()
  c.model.tiny = arg == "tiny"          # tiny random DPR + BART written under the workdir
  c.model.question_encoder = "facebook/dpr-question_encoder-single-nq-base"
  c.model.generator = "facebook/bart-large"
  c.model.rag_checkpoint = ""
  c.model.dtype = "bfloat16"            # computation dtype; params stay float32
  c.model.remat = "none"                # layers.REMAT_POLICIES
  c.model.scan_layers = False           # one lax.scan over stacked layers: compiles once

  # Retrieval: a saved index (python -m rag_jax.index build), or a passage file built into
  # WORKDIR/index with `doc_encoder` on first use.
  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.mode = "device"           # "device": exact MIPS in the step; "host": the index
  c.retrieval.index = "psgs_w100-idx"
  c.retrieval.passages = ""
  c.retrieval.doc_encoder = "facebook/dpr-ctx_encoder-single-nq-base"
  c.retrieval.dtype = "float32"         # device mode: the vectors' dtype on the mesh
  c.retrieval.k = 5
  c.retrieval.doc_temperature = 1.0     # p(z|x) = softmax(scores / doc_temperature)

  c.rag = ml_collections.ConfigDict()
  c.rag.kind = "token"                  # "token" | "sequence"
  c.rag.max_combined_length = 300
  c.rag.max_question_length = 64        # query encoder tokens
  c.rag.max_target_length = 8

  # Optimisation (HF's RAG recipe).
  c.batch_size = 8                      # global: split over the mesh's data axes
  c.learning_rate = 3e-5
  c.warmup_steps = 500
  c.decay = "linear"
  c.weight_decay = 0.001
  c.max_grad_norm = 0.1
  c.label_smoothing = 0.1
  c.adam_b1, c.adam_b2, c.adam_eps = 0.9, 0.999, 1e-8
  c.num_train_steps = 20_000
  c.seed = 0

  c.log_every_steps = 50
  c.eval_every_steps = 1000
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3
  c.eval_batch_size = 8
  c.eval_max_length = 4                 # generated tokens, start and end included

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.fsdp = False                        # shard params and optimizer state over `fsdp`

  if arg == "tiny":
    c.data.path = str(TINY_DATA / "{split}.jsonl")
    c.retrieval.index = ""
    c.retrieval.passages = str(TINY_DATA / "passages.tsv")
    c.retrieval.doc_encoder = ""        # the tiny question encoder's initial weights
    c.retrieval.k = 3
    c.rag.max_combined_length = 48
    c.model.dtype = "float32"
    c.rag.max_question_length = 32
    c.batch_size = 8
    c.learning_rate = 3e-3
    c.warmup_steps = 5
    c.label_smoothing = 0.0
    c.max_grad_norm = 1.0
    c.num_train_steps = 60
    c.log_every_steps = 10
    c.eval_every_steps = 30
    c.checkpoint_every_steps = 20
    c.eval_batch_size = 8
  return c
