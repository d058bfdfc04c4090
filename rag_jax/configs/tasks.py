"""What every task config (experiments/*.py) shares: model, retrieval, optimiser, evaluation and
the `:tiny` variant. A task config adds its data, metrics, test-time decoding and the paper's
figures:

    from rag_jax.configs import tasks
    from rag_jax.data import tiny

    def get_config(arg: str = ""):
      return tasks.config("msmarco", arg, data=dict(kind="msmarco", path="data/msmarco"),
                          tiny_data=dict(path=str(tiny.QA)), metrics=["bleu1", "rouge_l"],
                          eval_paper=tasks.GENERATION_DECODING, ...)

`qa` is `config` for the open-domain QA tasks read from DPR's files (NQ, TriviaQA, WebQuestions,
CuratedTrec).

The shared values are the paper's where it gives them (BART-large, DPR's NQ question encoder
over the 21M-passage psgs_w100 index, query encoder and generator trained jointly, document
encoder and index frozen) and otherwise those of HF's RAG fine-tuning recipe
(examples/research_projects/rag): AdamW, learning rate 3e-5, 500 warmup steps then linear
decay, max grad norm 0.1, label smoothing 0.1, weight decay 0.001, max_combined_length 300.

`:tiny` trains a tiny random DPR + BART (rag_jax.weights.tiny, written under the workdir over the
task's `tiny_vocab`) on small files in the task's official format, retrieving from the
48-passage made-up world of rag_jax/data/tiny/fever: seconds on a CPU. Every tiny QA-style task
shares one vocabulary (rag_jax/data/tiny/qa/vocab.txt), so that a tiny NQ checkpoint starts a
tiny WQ or CT run as the paper's NQ model starts theirs.
"""

import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import ml_collections

from rag_jax.data import tiny as tiny_lib

# Test-time retrieval and decoding per RAG kind (the paper's appendix B): open-domain QA
# decodes greedily, RAG-Token over 15 passages, RAG-Sequence over 50 with thorough decoding;
# MS MARCO and Jeopardy use 10 passages, 4 beams and fast decoding.
QA_DECODING = {"token": {"k": 15, "decoding": "greedy"},
               "sequence": {"k": 50, "decoding": "thorough"}}
GENERATION_DECODING = {"token": {"k": 10, "decoding": "beam"},
                       "sequence": {"k": 10, "decoding": "fast"}}
QA_METRICS = ("exact_match", "f1", "answer_in_top_k")
TINY_EVAL_K = 4  # not the tiny training k (3): evaluation retrieves its own number


def config(task: str, arg: str, *, data: Dict[str, Any], tiny_data: Dict[str, Any],
           metrics: Sequence[str], eval_paper: Dict[str, Dict[str, Any]],
           paper: Dict[str, Dict[str, float]], lengths: Tuple[int, int],
           tiny_lengths: Tuple[int, int] = (16, 16), eval_num_beams: int = 1, k: int = 5,
           variants: Sequence[str] = ("", "tiny"),
           tiny_vocab: pathlib.Path = tiny_lib.QA / "vocab.txt",
           wiki: Optional[Dict[str, Any]] = None) -> ml_collections.ConfigDict:
  """A task's config.

  Args:
    task: its name (`config.task`, in reports).
    arg: the variant asked for (`experiments/TASK.py:arg`); "tiny" is the tiny one.
    data: `config.data` fields: kind (a key of rag_jax.data.READERS), path, the split names
      (train_split, eval_split, test_split: names the reader substitutes for `{split}`) and
      the reader's own options.
    tiny_data: `config.data` fields of the tiny variant.
    metrics: rag_jax.evaluate.metrics names the task is scored by (rag_jax.evaluate.evaluation).
    eval_paper: per RAG kind, the test-time {"k", "decoding"} (`QA_DECODING`, ...).
    paper: per RAG kind, the paper's test figures, shown beside ours in report.md.
    lengths: (rag.max_target_length, eval_max_length) in generator tokens.
    tiny_lengths: the same for the tiny variant.
    eval_num_beams: beams at test time (beam search and fast / thorough decoding).
    k: passages retrieved per question in training.
    variants: the args the task accepts.
    tiny_vocab: the tiny model's vocabulary (a WordPiece vocab.txt).
    wiki: the `:wiki` demo's `config.data` fields (over rag_jax.data.wiki), its prompt
      ("doc_sep", "system_prompt"), lengths ("max_target_length", "eval_max_length"),
      "max_test_examples" (0: all) and optionally "max_swapped_examples" (default 64),
      "learning_rate" (default 1e-4) and "question_encoder_lr_scale" (default 1); None: the
      task has no such demo.
  """
  if wiki is not None:
    variants = tuple(variants) + ("wiki",)
  if arg not in variants:
    raise ValueError(f"unknown config variant {arg!r} of experiments/{task}.py; expected one "
                     f"of {[v for v in variants if v]} or none")
  c = ml_collections.ConfigDict()
  c.task = task
  # A training run's workdir (or its checkpoints/) or an HF RAG checkpoint to start from
  # (python -m rag_jax.evaluate --init sets it too). A workdir's own checkpoints come first.
  c.init = ""

  c.data = ml_collections.ConfigDict({"train_split": "train", "eval_split": "dev",
                                      "test_split": "test", **data})
  c.data.max_eval_examples = 0          # 0 = all
  c.data.max_train_examples = 0         # 0 = all

  # Model: a query encoder and a generator (directories, hub names or asset:NAME), or an HF
  # RAG checkpoint (`rag_checkpoint`, which then supplies both).
  c.model = ml_collections.ConfigDict()
  c.model.tiny = arg == "tiny"          # tiny random DPR + BART written under the workdir
  c.model.tiny_vocab = str(tiny_vocab)  # its vocabulary
  c.model.tiny_generator = "bart"       # or "llama": a tiny decoder-only generator
  c.model.question_encoder = "facebook/dpr-question_encoder-single-nq-base"
  c.model.generator = "facebook/bart-large"
  c.model.rag_checkpoint = ""
  c.model.dtype = "bfloat16"            # computation dtype; params stay float32
  c.model.remat = "none"                # layers.REMAT_POLICIES
  c.model.scan_layers = False           # one lax.scan over stacked layers: compiles once
  # n > 0: train only the top n layers of a decoder-only generator (and its final norm).
  c.model.train_generator_layers = 0

  # Retrieval: a saved index (python -m rag_jax.index build), or a passage file built into
  # WORKDIR/index with `doc_encoder` on first use.
  c.retrieval = ml_collections.ConfigDict()
  c.retrieval.mode = "device"           # "device": exact MIPS in the step; "host": the index;
                                        # "bm25": bm25s over the index's passages (ablation);
                                        # "none": closed book, the question alone
  c.retrieval.index = "psgs_w100-idx"
  c.retrieval.passages = ""
  c.retrieval.doc_encoder = "facebook/dpr-ctx_encoder-single-nq-base"
  # Build the passages' index once into $RAG_JAX_CACHE/indexes (shared by runs), not WORKDIR.
  c.retrieval.cache_index = False
  c.retrieval.dtype = "float32"         # device mode: the vectors' dtype on the mesh
  c.retrieval.k = k                     # passages per question in training
  c.retrieval.doc_temperature = 1.0     # p(z|x) = softmax(scores / doc_temperature)
  c.retrieval.freeze_query_encoder = False  # the paper's "Frozen" ablation: no updates to it

  c.rag = ml_collections.ConfigDict()
  c.rag.kind = "token"                  # "token" | "sequence"
  c.rag.max_combined_length = 300
  c.rag.max_question_length = 64        # query encoder tokens
  c.rag.max_target_length = lengths[0]
  # The context string is `title + title_sep + text + doc_sep + question` (HF RAG's); a
  # decoder-only generator with a chat template reads it as the user's turn after
  # `system_prompt` ("": the template's default).
  c.rag.title_sep = " / "
  c.rag.doc_sep = " // "
  c.rag.system_prompt = ""

  # Optimisation (HF's RAG recipe).
  c.batch_size = 8                      # global: split over the mesh's data axes
  c.learning_rate = 3e-5
  c.question_encoder_lr_scale = 1.0     # the query encoder's rate: learning_rate times this
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
  # A latest checkpoint that does not restore (a file truncated since, say) is moved aside to
  # checkpoints/STEP.damaged and the one before it restored; false: a one-line error instead.
  c.restore_fallback = True

  # Evaluation (rag_jax.evaluate.evaluation; the same for training's periodic eval and rag_jax.evaluate).
  c.eval_batch_size = 8
  c.eval_max_length = lengths[1]        # generated tokens, start and end included
  c.eval_k = 0                          # passages at test time; 0: eval_paper's for rag.kind
  # greedy | beam (RAG-Token), thorough | fast (RAG-Sequence); "": eval_paper's for rag.kind
  c.eval_decoding = ""
  c.eval_num_beams = eval_num_beams
  c.eval_paper = eval_paper
  c.metrics = list(metrics)
  c.paper = paper

  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1})
  c.fsdp = False                        # shard params and optimizer state over `fsdp`

  if arg == "tiny":
    c.data.update(tiny_data)
    c.retrieval.index = ""
    c.retrieval.passages = str(tiny_lib.PASSAGES)
    c.retrieval.doc_encoder = ""        # the tiny question encoder's initial weights
    c.retrieval.k = 3
    c.eval_paper = {kind: dict(s, k=TINY_EVAL_K) for kind, s in eval_paper.items()}
    c.rag.max_combined_length = 48
    c.rag.max_target_length, c.eval_max_length = tiny_lengths
    c.model.dtype = "float32"
    c.rag.max_question_length = 32
    # A run of seconds that still learns: a large step, little warmup, no smoothing.
    c.update(dict(learning_rate=3e-3, warmup_steps=5, label_smoothing=0.0, max_grad_norm=1.0,
                  num_train_steps=60, log_every_steps=10, eval_every_steps=30,
                  checkpoint_every_steps=20))
  if arg == "wiki":
    _wiki(c, dict(wiki))
  return c


def _wiki(c: ml_collections.ConfigDict, wiki: Dict[str, Any]) -> None:
  """The demo on the embedded Wikipedia (`python -m rag_jax.train --config
  experiments/TASK.py:wiki`, rag_jax.train.demo): the task derived by rag_jax.data.wiki, MiniLM
  as the query encoder (fine-tuned) and as the frozen index's document encoder, SmolLM2-135M-
  Instruct as the generator with its top layers trained, sized to train and evaluate on a
  2-core CPU in minutes."""
  prompt = {k: wiki.pop(k) for k in ("doc_sep", "system_prompt", "max_target_length",
                                      "eval_max_length", "max_test_examples")}
  demo = {"max_test_examples": prompt.pop("max_test_examples"),
          "max_swapped_examples": wiki.pop("max_swapped_examples", 64)}
  optimizer = {"learning_rate": wiki.pop("learning_rate", 1e-4),
               "question_encoder_lr_scale": wiki.pop("question_encoder_lr_scale", 1.0)}
  c.data.update(dict(train_split="train", eval_split="dev", test_split="test", **wiki))
  c.model.question_encoder = "asset:all-MiniLM-L6-v2"
  c.model.generator = "asset:smollm2-135m-instruct"
  c.model.dtype = "float32"
  c.model.train_generator_layers = 4    # of 30
  c.retrieval.update(dict(index="", passages="wiki-tasks:passages.tsv",
                          doc_encoder="asset:all-MiniLM-L6-v2", cache_index=True, k=3,
                          doc_temperature=0.02))  # MiniLM's cosines: see configs/wiki.py
  c.rag.update(dict(title_sep=": ", doc_sep=prompt["doc_sep"],
                    system_prompt=prompt["system_prompt"], max_combined_length=128,
                    max_target_length=prompt["max_target_length"]))
  c.eval_max_length = prompt["eval_max_length"]
  # Greedy, over the training k: what a CPU decodes in a minute or two.
  c.eval_paper = {"token": {"k": 3, "decoding": "greedy"},
                  "sequence": {"k": 3, "decoding": "thorough"}}
  c.eval_num_beams = 1
  c.update(dict(batch_size=4, eval_batch_size=8, warmup_steps=5, label_smoothing=0.0,
                max_grad_norm=1.0, num_train_steps=60, log_every_steps=5,
                checkpoint_every_steps=60, **optimizer))
  c.eval_every_steps = 0                # the demo scores the test split after training
  c.demo = ml_collections.ConfigDict(demo)


def qa(task: str, arg: str, *, dpr: str, tiny: str, paper: Dict[str, Dict[str, float]],
       kind: str = "dpr_qa", metrics: Sequence[str] = QA_METRICS, init: str = "",
       wiki: Optional[Dict[str, Any]] = None, **options) -> ml_collections.ConfigDict:
  """An open-domain QA task from DPR's files in data/dpr, the paper's splits: the retriever JSON
  of train and dev (`biencoder-{dpr}-train.json`; their positive passages name the gold
  articles), the QA csv of test (`{dpr}-test.qa.csv`); greedy decoding at test time
  (`QA_DECODING`), answers of up to 25 tokens.

  Args:
    task, arg, paper, metrics: as `config`.
    dpr: DPR's name of the dataset ("nq", "trivia", "webquestions", "curatedtrec").
    tiny: the tiny variant's file in rag_jax/data/tiny/qa (`rag_jax.data.tiny.QA`), a
      `{split}` pattern.
    kind: the reader (rag_jax.data.READERS).
    init: the run to start from (not in `:tiny`, which starts from nothing unless told).
    **options: more `config.data` fields (the reader's options).
  """
  c = config(task, arg, data=dict(kind=kind, path="data/dpr/{split}",
                                  train_split=f"biencoder-{dpr}-train.json",
                                  eval_split=f"biencoder-{dpr}-dev.json",
                                  test_split=f"{dpr}-test.qa.csv", **options),
             tiny_data=dict(path=str(tiny_lib.QA / tiny), train_split="train", eval_split="dev",
                            test_split="test"),
             metrics=metrics, eval_paper=QA_DECODING, paper=paper, lengths=(25, 25), wiki=wiki)
  c.init = "" if arg in ("tiny", "wiki") else init
  return c
