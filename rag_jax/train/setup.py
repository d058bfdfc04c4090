"""A training run's setup from its config: mesh, model, data, index and the sharded state.

`build(config, workdir)` checks the config, loads (or writes, for `model.tiny`) the
checkpoints, starts from `config.init` if it names one, reads the task's data, loads or
builds the index, tokenizes everything once and places the state on the mesh. The result, a
`Run` of plain values, is what `loop.train_and_evaluate`, `predict` and
`rag_jax.compile` work from; the jitted functions are `step.make_steps`'. The pieces that
`rag_jax.compile` shares (`training_rag`, `make_step_config`, `state_shardings`) take shapes
as well as loaded weights.

Retrieval modes (`retrieval.mode`): "device" (exact MIPS inside the jitted step), "host" (the
saved index searched between jitted calls), "bm25" (the paper's ablation: bm25s over the
index's passages, each split retrieved once up front, its scores the logits of p(z|x)), and
"none" (closed book: the generator reads the question alone, trained and evaluated the same way).
"""

import dataclasses
import os
import pathlib
import re
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from rag_jax import checkpoint as checkpoint_lib
from rag_jax import contexts
from rag_jax import data as data_lib
from rag_jax import errors
from rag_jax import prompts
from rag_jax import rag as rag_lib
from rag_jax import sharding
from rag_jax import weights
from rag_jax.data import dpr
from rag_jax.data.wiki import cache as wiki_cache
from rag_jax.encoder import TextEncoder
from rag_jax.index import bm25 as bm25_lib
from rag_jax.index import device as device_lib
from rag_jax.index import saved
from rag_jax.model import RagModel
from rag_jax.models import llama as llama_lib
from rag_jax.models import scan
from rag_jax.train import input_pipeline
from rag_jax.train import optimizer
from rag_jax.train import step as step_lib
from rag_jax.weights import tiny

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# What a config's `metrics` may name: rag_jax.evaluate.metrics' scores of predictions against golds.
METRICS = ("exact_match", "f1", "regex_match", "bleu1", "rouge_l", "q_bleu1", "label_accuracy",
           "answer_in_top_k")
# Each RAG kind's decodings (RagModel.generate).
DECODINGS = {"token": ("greedy", "beam"), "sequence": ("thorough", "fast")}


class SetupError(ValueError):
  """A config or input that cannot make a run; the message says why in one line."""


class ConfigError(SetupError, errors.UsageError):
  """A config value that cannot be run, found before anything is written: the entry points
  exit 2 on it, as on a bad flag."""


def prepare_workdir(workdir) -> pathlib.Path:
  """Creates the workdir and checks that it is writable, failing in one line if not."""
  path = pathlib.Path(workdir)
  if path.exists() and not path.is_dir():
    raise SetupError(f"workdir {path} is a file, not a folder")
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".write-test-{os.getpid()}"
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise SetupError(f"workdir {path} is not writable ({e.strerror or e})") from None
  return path


def _field(config, dotted: str):
  """config["a"]["b"] for "a.b"."""
  for part in dotted.split("."):
    config = config[part]
  return config


def override(config, **fields):
  """A copy of `config` with dotted `fields` set: `override(c, **{"retrieval.k": 3})`."""
  config = config.copy_and_resolve_references()
  with config.unlocked():
    for dotted, value in fields.items():
      parent, _, leaf = dotted.rpartition(".")
      (_field(config, parent) if parent else config)[leaf] = value
  return config


def check_config(config) -> jax.sharding.Mesh:
  """Values the rest would trip over later, as one-line errors (ConfigError) now; returns the
  config's mesh over this job's devices."""
  choices = {"retrieval.mode": ("device", "host", "bm25", "none"),
             "rag.kind": ("token", "sequence"), "model.tiny_generator": tiny.GENERATOR_KINDS,
             "model.dtype": tuple(DTYPES), "retrieval.dtype": tuple(DTYPES),
             "decay": ("linear", "cosine", "constant")}
  for name, allowed in choices.items():
    value = _field(config, name)
    if value not in allowed:
      raise ConfigError(f"config {name}={value!r}: expected one of {list(allowed)}")
  positive = ("batch_size", "num_train_steps", "log_every_steps",
              "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
              "retrieval.k", "rag.max_combined_length", "rag.max_question_length",
              "rag.max_target_length", "eval_max_length")
  for name in positive:
    value = _field(config, name)
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"config {name}={value!r}: expected a positive integer")
  if config.retrieval.doc_temperature <= 0:
    raise ConfigError(f"config retrieval.doc_temperature={config.retrieval.doc_temperature}: "
                     "expected > 0")
  if not isinstance(config.eval_every_steps, int) or config.eval_every_steps < 0:
    raise ConfigError(f"config eval_every_steps={config.eval_every_steps!r}: expected a "
                     "non-negative integer (0: no periodic eval)")
  if config.rag.max_target_length < 2:
    raise ConfigError("config rag.max_target_length must be at least 2 (start and end tokens)")
  if config.rag.max_combined_length < 4:
    raise ConfigError("config rag.max_combined_length must be at least 4")
  unknown = [m for m in config.metrics if m not in METRICS]
  if unknown or not config.metrics:
    raise ConfigError(f"config metrics={list(config.metrics)}: expected names from {list(METRICS)}")
  decode_settings(config)
  try:
    mesh = sharding.make_mesh(dict(config.mesh))
  except ValueError as e:
    raise ConfigError(f"config mesh={dict(config.mesh)}: {errors.first_line(e)}") from None
  if config.batch_size % sharding.data_size(mesh) or config.batch_size % jax.process_count():
    raise ConfigError(f"config batch_size={config.batch_size} does not split over the "
                      f"{sharding.data_size(mesh)} data shards of the mesh")
  if config.eval_batch_size % sharding.data_size(mesh):
    raise ConfigError(f"config eval_batch_size={config.eval_batch_size} does not split over "
                      f"the {sharding.data_size(mesh)} data shards of the mesh")
  return mesh


def decode_settings(config) -> Dict[str, Any]:
  """How evaluation decodes: {"kind", "k", "decoding", "num_beams", "max_length"}.

  `eval_k` = 0 and `eval_decoding` = "" take the task's test-time settings for `rag.kind`
  from `eval_paper` (the paper's: 15 passages and greedy for RAG-Token, 50 and thorough
  decoding for RAG-Sequence on open-domain QA; 10 passages, 4 beams and fast decoding on
  MS MARCO and Jeopardy), so that switching the kind switches them too.
  """
  kind = config.rag.kind
  paper = config.eval_paper[kind]
  k = 1 if config.retrieval.mode == "none" else config.eval_k or paper.k
  decoding = config.eval_decoding or paper.decoding
  if not isinstance(k, int) or k < 1:
    raise ConfigError(f"config eval_k={config.eval_k!r}: expected a positive integer (0: the "
                     f"paper's, eval_paper.{kind}.k)")
  if decoding not in DECODINGS[kind]:
    raise ConfigError(f"config eval_decoding={decoding!r}: rag.kind={kind!r} decodes with one "
                     f"of {list(DECODINGS[kind])}")
  beams = config.eval_num_beams
  if not isinstance(beams, int) or beams < 1 or (decoding == "greedy" and beams != 1):
    raise ConfigError(f"config eval_num_beams={beams!r}: expected a positive integer (1 for "
                     "greedy decoding)")
  return {"kind": kind, "k": k, "decoding": decoding, "num_beams": beams,
          "max_length": config.eval_max_length}


@dataclasses.dataclass
class Split:
  """One split's examples and their token arrays (input_pipeline.tokenize_examples)."""
  examples: List[data_lib.Example]
  arrays: Dict[str, np.ndarray]


@dataclasses.dataclass
class Run:
  """Everything a training run works from: plain values, built once by `build`. The jitted
  functions are `step.make_steps(run.rag, run.tx, run.step_config, run.state_sharding)`'s,
  the retrieval of a batch `retrieval.BatchRetriever.of(run, steps)`'s."""
  config: Any
  mesh: jax.sharding.Mesh
  rag: rag_lib.Rag
  question_tokenizer: Any
  generator_tokenizer: Any
  step_config: step_lib.StepConfig
  tx: optax.GradientTransformation
  state: step_lib.TrainState
  state_sharding: Any                  # the state's NamedShardings, the step keeps it in them
  train: Split
  eval: Split
  index: saved.Index
  passage_tokens: np.ndarray           # [M, P]
  passage_length: np.ndarray           # [M]
  device_index: Optional[device_lib.DeviceIndex]
  target: Callable[[data_lib.Example], str]
  eval_split: str = "dev"              # which split `eval` holds: "dev" or "test"

  @property
  def train_examples(self):
    return self.train.examples


def rag_settings(config) -> Dict[str, Any]:
  """The RagConfig fields a training config sets (besides a checkpoint's separators)."""
  return dict(n_docs=config.retrieval.k, max_combined_length=config.rag.max_combined_length,
              label_smoothing=config.label_smoothing)


def _load_model(config, workdir: pathlib.Path,
                rag_checkpoint: str) -> Tuple[RagModel, str]:
  """The RAG model and the directory of the document encoder's initial weights ("" when the
  config must name one)."""
  m = config.model
  dtype = DTYPES[m.dtype]
  rag_config = rag_settings(config)
  if rag_checkpoint:  # it has its own title and doc separators
    model = RagModel.from_pretrained(rag_checkpoint, dtype=dtype, **rag_config)
    return model, ""
  if m.tiny:
    name = "tiny_model" if m.tiny_generator == "bart" else f"tiny_model_{m.tiny_generator}"
    directory = tiny.write(workdir / name, _tiny_words(m.tiny_vocab), seed=config.seed,
                           generator_kind=m.tiny_generator)
    question_encoder, generator = directory / "question_encoder", directory / "generator"
  else:
    question_encoder, generator = m.question_encoder, m.generator
  model = RagModel.from_parts(question_encoder, generator, dtype=dtype,
                              title_sep=config.rag.title_sep,
                              doc_sep=config.rag.doc_sep, **rag_config)
  prompts.use_chat_template(model, config.rag.system_prompt)
  return model, str(question_encoder) if m.tiny else ""


def _tiny_words(vocab: str) -> List[str]:
  """The words of a WordPiece vocab.txt, less the special tokens tiny.write adds itself."""
  try:
    lines = pathlib.Path(vocab).read_text(encoding="utf-8").splitlines()
  except OSError as e:
    raise SetupError(f"config model.tiny_vocab={vocab!r}: {e.strerror or e}") from None
  specials = set(tiny.BERT_SPECIALS) | set(tiny.BART_SPECIALS)
  return [w for w in lines if w.strip() and w not in specials]


def checkpoints_in(path: pathlib.Path) -> str:
  """The directory of a training run's checkpoints at `path` (a workdir, or its checkpoints/
  itself), or "" when there are none."""
  for directory in (path / "checkpoints", path):
    if directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir()):
      return str(directory)
  return ""


def resolve_init(init: str) -> Tuple[str, str]:
  """What `config.init` names: ("checkpoint", its checkpoints directory) for a training run's
  workdir (or its `checkpoints/`), ("rag", init) for an HF RAG checkpoint (a directory or a
  hub name), ("", "") for none. A path that is neither is a SetupError."""
  if not init:
    return "", ""
  path = pathlib.Path(init).expanduser()
  checkpoints = checkpoints_in(path)
  if checkpoints:
    return "checkpoint", checkpoints
  config = path / "config.json"
  if config.is_file():
    return "rag", init
  if not path.exists() and re.fullmatch(r"[\w.-]+/[\w.-]+", init) and not init.startswith("."):
    return "rag", init  # a hub name (facebook/rag-token-nq)
  what = "holds no training checkpoint nor an HF RAG config.json" if path.exists() else (
      "no such checkpoint")
  raise SetupError(f"init {init}: {what} (expected a train workdir, its checkpoints/, or an HF "
                   "RAG directory)")


def training_rag(question_encoder, generator, rag_config: rag_lib.RagConfig, config
                 ) -> rag_lib.Rag:
  """The Rag the step runs: the modules with the config's `model.remat` and scanned layers
  (`model.scan_layers`; a Llama runs its layers unscanned). Training and `rag_jax.compile`
  both make theirs here."""
  m = config.model
  modules = {"question_encoder": question_encoder, "generator": generator}
  for name, module in modules.items():
    if isinstance(module, llama_lib.Llama):
      if m.scan_layers:
        raise SetupError(f"config model.scan_layers: the {type(module).__name__} {name} runs "
                         "its layers unscanned; set it to False")
      modules[name] = module.clone(remat=m.remat)
    else:
      modules[name] = module.clone(remat=m.remat, scan_layers=m.scan_layers)
  return rag_lib.Rag(modules["question_encoder"], modules["generator"], rag_config)


def _for_training(model: RagModel, config) -> Tuple[rag_lib.Rag, Any]:
  """The Rag the step runs (`training_rag`) and the loaded params in its layout."""
  rag = training_rag(model.question_encoder, model.generator, model.config, config)
  params = dict(model.params)
  if config.model.scan_layers:
    params = {name: scan.stack_layers(params[name], getattr(model, name))
              for name in ("question_encoder", "generator")}
  return rag, params


def make_step_config(config, rag: rag_lib.Rag, fmt: contexts.ContextFormat
                     ) -> step_lib.StepConfig:
  """What the loss needs besides the model, from the config (training's and compile's)."""
  try:
    frozen = optimizer.frozen_params(config, rag)
  except ValueError as e:
    raise SetupError(str(e)) from None
  return step_lib.StepConfig(kind=config.rag.kind, k=config.retrieval.k,
                             label_smoothing=config.label_smoothing,
                             doc_temperature=config.retrieval.doc_temperature,
                             context=fmt, frozen=frozen)


def state_shardings(rag: rag_lib.Rag, tx, config, mesh):
  """The abstract train state (params boxed with their logical axes) and its shardings on
  `mesh` under the config's axis rules (training's and compile's)."""
  abstract = step_lib.abstract_state(rag, tx, config.seed)
  return abstract, sharding.shardings_for(mesh, abstract, sharding.logical_rules(config.fsdp))


def inference_model(run: "Run", params) -> RagModel:
  """A RagModel over the run's current params for decoding (unscanned: cached decoding runs
  layer by layer)."""
  rag = run.rag
  if run.config.model.scan_layers:
    params = {name: scan.unstack_layers(params[name], getattr(rag, name))
              for name in ("question_encoder", "generator")}
    rag = rag_lib.Rag(rag.question_encoder.clone(scan_layers=False),
                      rag.generator.clone(scan_layers=False), rag.config)
  return RagModel(rag, params, run.question_tokenizer, run.generator_tokenizer)


def _index(config, workdir: pathlib.Path, doc_encoder_dir: str):
  """The saved index: `retrieval.index`, or built into WORKDIR/index from
  `retrieval.passages` with `retrieval.doc_encoder` (the tiny question encoder by default)."""
  r = config.retrieval
  if r.index:
    path = pathlib.Path(r.index)
    if not path.exists():
      raise SetupError(f"{path}: no such index (build it once with python -m rag_jax.index "
                       "build, see the config's docstring)")
    return saved.load_index(path, checksums=False)
  passages = _passages(config)
  if not (r.doc_encoder or doc_encoder_dir):
    raise SetupError("config retrieval.doc_encoder must name the document encoder that embeds "
                     "retrieval.passages (an HF RAG checkpoint holds only the query encoder)")
  if r.cache_index:
    encoder_dir = weights.resolve(r.doc_encoder or doc_encoder_dir)
    return saved.cached_index(passages, TextEncoder.from_pretrained(encoder_dir), encoder_dir,
                              encoder_source=r.doc_encoder or str(encoder_dir),
                              log=log, progress=jax.process_index() == 0)
  out = workdir / "index"
  if not (out / saved.MANIFEST).is_file():
    # Every process builds its own and renames it into place, the first rename winning: a
    # workdir may be shared by the hosts or local to each, and no process waits on another.
    encoder_dir = weights.resolve(r.doc_encoder or doc_encoder_dir)
    mine = workdir / f"index.{jax.process_index()}-{os.getpid()}"
    saved.build_index(passages, TextEncoder.from_pretrained(encoder_dir), encoder_dir, mine,
                      backend="exact", dtype="float32", progress=False, overwrite=True,
                      log=lambda m: None)
    try:
      os.rename(mine, out)
    except OSError:  # another process's index is there
      shutil.rmtree(mine)
  return saved.load_index(out, checksums=False)


def _passages(config) -> pathlib.Path:
  """The passage file `retrieval.passages` names."""
  passages = wiki_cache.resolve(config.retrieval.passages)
  if not passages:
    raise SetupError("config retrieval.index or retrieval.passages must name the passages")
  if not pathlib.Path(passages).is_file():
    raise SetupError(f"{passages}: no such passage file (DPR's psgs_w100.tsv format; see the "
                     "config's docstring for where it comes from)")
  return pathlib.Path(passages)


def log(message: str) -> None:
  """A line on stderr, from process 0."""
  if jax.process_index() == 0:
    print(message, file=sys.stderr)


def split_name(config, split: str) -> str:
  """The data's name for "train", "dev" or "test" (`data.train_split`, `eval_split`,
  `test_split`); an unknown split, or a test split the task lacks, is a SetupError."""
  names = {"train": config.data.train_split, "dev": config.data.eval_split,
           "test": config.data.test_split}
  if split not in names:
    raise SetupError(f"unknown split {split!r}: expected one of {sorted(names)}")
  if not names[split]:
    raise SetupError(f"the config names no {split} split (data.{split}_split is empty)")
  return names[split]


def read_examples(config, split: str) -> List[data_lib.Example]:
  """The examples of "train", "dev" or "test" (`split_name`), as the task's reader gives them."""
  split = split_name(config, split)
  d = config.data
  options = {"two_way": d.two_way} if d.kind == "fever" else {}
  try:
    return data_lib.read(d.kind, wiki_cache.resolve(d.path), split, **options)
  except data_lib.DataError as e:
    raise SetupError(str(e)) from None


def _target_fn(config, tokenizer, regex_targets: Dict[str, str]
               ) -> Callable[[data_lib.Example], str]:
  """Example -> its training target text. FEVER: the label's word, checked to be one token.
  CuratedTrec: `regex_targets` (the text its patterns match, `_regex_targets`)."""
  if config.data.kind == "curatedtrec":
    return lambda e: regex_targets.get(e.id, "")
  if config.data.kind != "fever":
    return lambda e: e.targets[0] if e.targets else ""
  words = dict(config.data.label_words)
  for label, word in words.items():
    n = len(tokenizer(word, add_special_tokens=False)["input_ids"])
    if n != 1:
      raise SetupError(f"config data.label_words[{label!r}]={word!r} is {n} tokens of the "
                       "generator's vocabulary; each label must be one token")
  return lambda e: words[e.label]


def _regex_targets(config, examples: List[data_lib.Example], model: RagModel,
                   index: saved.Index) -> Dict[str, str]:
  """CuratedTrec's training targets, as the paper makes them: for each question, what its
  patterns match most often in the top `data.regex_target_passages` passages the initial
  retriever finds (`dpr.regex_target`)."""
  labelled = [e for e in examples if e.targets]
  if not labelled:
    return {}
  n = min(config.data.regex_target_passages, len(index.passages))
  vectors = model.question_text_encoder().encode([e.source for e in labelled])
  _, ids = index.search(vectors, n)
  texts = lambda row: [index.passages[int(i)]["text"] for i in row if i >= 0]
  return {e.id: dpr.regex_target(e.targets, texts(row)) for e, row in zip(labelled, ids)}


def _bm25_arrays(index: saved.Index, splits: List[List[data_lib.Example]], k: int):
  """BM25's top `k` of each example of each split, retrieved once (the retriever is fixed):
  {"bm25_ids" [N, k], "bm25_scores" [N, k]} per split."""
  search = bm25_lib.BM25Search(index.passages)
  out = []
  for examples in splits:
    scores, ids = search.search([e.source for e in examples], k) if examples else (
        np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    out.append({"bm25_ids": ids, "bm25_scores": scores})
  return out


def build(config, workdir: pathlib.Path, *, split: str = "dev", train: bool = True) -> Run:
  """The run of `config` in `workdir`.

  Args:
    config: a task config (experiments/*.py).
    workdir: where the tiny model and a built index go.
    split: the split evaluation reads, "dev" or "test" (`split_name`).
    train: read and tokenize the training split and make the optimizer (evaluation alone
      needs neither).
  """
  mesh = check_config(config)
  init_kind, init_path = resolve_init(config.init)
  train_examples = read_examples(config, "train") if train else []
  eval_examples = read_examples(config, split)
  if config.data.max_eval_examples:
    eval_examples = eval_examples[:config.data.max_eval_examples]
  if config.data.max_train_examples:
    train_examples = train_examples[:config.data.max_train_examples]
  model, doc_encoder_dir = _load_model(config, workdir, init_path if init_kind == "rag" else
                                       config.model.rag_checkpoint)
  rag, params = _for_training(model, config)
  index = _index(config, workdir, doc_encoder_dir)
  if index.dim != rag.question_encoder.config.output_dim:
    raise SetupError(f"the index's vectors are {index.dim}-d, the query encoder's "
                     f"{rag.question_encoder.config.output_dim}-d")
  eval_k = decode_settings(config)["k"]
  for name, k in (("retrieval.k", config.retrieval.k), ("eval_k", eval_k)):
    if k > len(index.passages):
      raise SetupError(f"config {name}={k} exceeds the index's {len(index.passages)} passages")

  g_tok = model.generator_tokenizer
  try:
    fmt = model.context_format()
  except ValueError as e:
    raise SetupError(str(e)) from None
  step_config = make_step_config(config, rag, fmt)
  regex_targets = (_regex_targets(config, train_examples, model, index)
                   if config.data.kind == "curatedtrec" else {})
  target = _target_fn(config, g_tok, regex_targets)
  bm25 = ([{}, {}] if config.retrieval.mode != "bm25" else _bm25_arrays(
      index, [train_examples, eval_examples], max(config.retrieval.k, eval_k)))
  tokenize = lambda examples, extra: Split(examples, dict(input_pipeline.tokenize_examples(
      examples, question_tokenizer=model.question_tokenizer, generator_tokenizer=g_tok,
      rag_config=model.config, fmt=fmt,
      target_format=input_pipeline.TargetFormat.of(g_tok, rag.gen),
      closed_book=config.retrieval.mode == "none",
      max_question_length=config.rag.max_question_length,
      max_target_length=config.rag.max_target_length, target=target), **extra))
  passage_tokens, passage_length = contexts.tokenize_passages(index.passages, g_tok,
                                                              model.config, fmt)
  # Evaluation alone keeps no optimizer state (AdamW's would be twice the params).
  tx = optimizer.make_optimizer(config, step_config.frozen) if train else optax.set_to_zero()
  state, state_sharding = _place_state(rag, params, tx, config, mesh)
  del params
  if init_kind == "checkpoint":
    state = state.replace(params=restore_params(init_path, state.params, mesh))
  device_index = None
  if config.retrieval.mode == "device":
    device_index = device_lib.DeviceIndex.create(mesh, index.embeddings, passage_tokens,
                                                 passage_length, config.retrieval.dtype)
  return Run(config=config, mesh=mesh, rag=rag, question_tokenizer=model.question_tokenizer,
             generator_tokenizer=g_tok, step_config=step_config, tx=tx, state=state,
             state_sharding=state_sharding,
             train=tokenize(train_examples, bm25[0]) if train else Split([], {}),
             eval=tokenize(eval_examples, bm25[1]),
             index=index, passage_tokens=passage_tokens, passage_length=passage_length,
             device_index=device_index, target=target, eval_split=split)


def restore_params(directory: str, params, mesh):
  """The params of the latest checkpoint in `directory`, placed as `params` are."""
  manager = checkpoint_lib.Manager(pathlib.Path(directory), keep=1)
  try:
    restored = manager.restore_params(params, sharding.replicated(mesh))
  except (ValueError, KeyError) as e:
    raise SetupError(f"init {directory}: its params do not fit this config's model "
                     f"({errors.first_line(e)})") from None
  finally:
    manager.close()
  return restored


def _place_state(rag: rag_lib.Rag, params, tx, config, mesh):
  """The train state on the mesh, with its shardings from the modules' logical axes."""
  _, shardings = state_shardings(rag, tx, config, mesh)
  state = step_lib.create_state(params, tx, config.seed)
  return jax.device_put(state, shardings), shardings
