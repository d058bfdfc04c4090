"""A training run from its config: mesh, model, data, index, sharded state and the step.

`build(config, workdir)` checks the config, loads (or writes, for `model.tiny`) the
checkpoints, reads the task's data, loads or builds the index, tokenizes everything once and
places the state on the mesh. The result, a `Run`, is what `train.train_and_evaluate` and
`evaluation.evaluate` work from.
"""

import dataclasses
import os
import pathlib
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import data as data_lib
from rag_jax import distributed
from rag_jax import input_pipeline
from rag_jax import rag as rag_lib
from rag_jax import sharding
from rag_jax import tiny
from rag_jax import train_step as step_lib
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import saved
from rag_jax.models import scan

Array = jax.Array
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# The separators of HF's context format (" / ", " // "), which the data's words may lack.
TINY_PUNCTUATION = ("/",)


class SetupError(ValueError):
  """A config or input that cannot make a run; the message says why in one line."""


def prepare_workdir(workdir) -> pathlib.Path:
  """Creates the workdir and checks that it is writable, failing in one line if not."""
  path = pathlib.Path(workdir)
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


def check_config(config) -> None:
  """Values the rest would trip over later, as one-line errors now."""
  choices = {"retrieval.mode": ("device", "host"), "rag.kind": ("token", "sequence"),
             "model.dtype": tuple(DTYPES), "retrieval.dtype": tuple(DTYPES),
             "decay": ("linear", "cosine", "constant")}
  for name, allowed in choices.items():
    value = _field(config, name)
    if value not in allowed:
      raise SetupError(f"config {name}={value!r}: expected one of {list(allowed)}")
  positive = ("batch_size", "num_train_steps", "log_every_steps", "eval_every_steps",
              "checkpoint_every_steps", "keep_checkpoints", "eval_batch_size",
              "retrieval.k", "rag.max_combined_length", "rag.max_question_length",
              "rag.max_target_length", "eval_max_length")
  for name in positive:
    value = _field(config, name)
    if not isinstance(value, int) or value < 1:
      raise SetupError(f"config {name}={value!r}: expected a positive integer")
  if config.retrieval.doc_temperature <= 0:
    raise SetupError(f"config retrieval.doc_temperature={config.retrieval.doc_temperature}: "
                     "expected > 0")
  if config.rag.max_combined_length < 4:
    raise SetupError("config rag.max_combined_length must be at least 4")


@dataclasses.dataclass
class Split:
  """One split's examples and their token arrays (input_pipeline.tokenize_examples)."""
  examples: List[data_lib.Example]
  arrays: Dict[str, np.ndarray]


@dataclasses.dataclass
class Run:
  """Everything a training run works from."""
  config: Any
  mesh: jax.sharding.Mesh
  rag: rag_lib.Rag
  question_tokenizer: Any
  generator_tokenizer: Any
  step_config: step_lib.StepConfig
  state: step_lib.TrainState
  train: Split
  eval: Split
  index: saved.Index
  passage_tokens: np.ndarray           # [M, P]
  passage_length: np.ndarray           # [M]
  device_index: Optional[step_lib.DeviceIndex]
  target: Callable[[data_lib.Example], str]
  _step: Callable = None
  _encode: Callable = None
  _retrieve: Callable = None
  _contexts: Callable = None           # contexts and doc scores of a retrieved batch, no dropout

  @property
  def train_examples(self):
    return self.train.examples

  # ---------------------------------------------------------------------------------------

  def place(self, arrays: Dict[str, np.ndarray], replicated: bool = False) -> Dict[str, Array]:
    """This process's rows -> global arrays split over the data axes; or, `replicated`, the
    whole batch (the same on every process) on every device."""
    shard = lambda x: (sharding.replicated(self.mesh) if replicated
                       else sharding.batch_sharding(self.mesh, x.ndim))
    return {k: jax.make_array_from_process_local_data(shard(v), v) for k, v in arrays.items()}

  def retrieved(self, params, arrays: Dict[str, np.ndarray], replicated: bool = False
                ) -> Dict[str, Array]:
    """A batch with its retrieved documents (doc_ids, doc_embeds, passage_tokens,
    passage_length), by the config's retrieval mode. `arrays` holds this process's rows, or
    with `replicated` the whole batch (evaluation decodes it on every process)."""
    batch = self.place({k: v for k, v in arrays.items() if k != "gold"}, replicated)
    if self.device_index is not None:
      return self._retrieve(params, batch, self.device_index)
    # Every process searches the whole batch's questions and keeps its own rows' documents.
    q = distributed.to_host(self._encode(params, batch))
    _, ids = self.index.search(q, self.step_config.k)
    ids = np.asarray(ids, np.int64)
    if not replicated:
      ids = input_pipeline.host_rows(ids)
    safe = np.maximum(ids, 0)
    docs = {"doc_ids": ids.astype(np.int32),
            "doc_embeds": np.asarray(self.index.embeddings[safe.ravel()],
                                     np.float32).reshape(ids.shape + (-1,)),
            "passage_tokens": self.passage_tokens[safe],
            "passage_length": np.where(ids >= 0, self.passage_length[safe], 0)}
    return dict(batch, **self.place(docs, replicated))

  def step(self, state: step_lib.TrainState, rows: np.ndarray):
    """One training step on global batch `rows` of the training split."""
    arrays = input_pipeline.gather(self.train.arrays, input_pipeline.host_rows(rows))
    if self.device_index is not None:
      batch, index = self.place({k: v for k, v in arrays.items() if k != "gold"}), self.device_index
    else:
      batch, index = self.retrieved(state.params, arrays), None
    # Traced under the logical axis rules, so the models' activation constraints apply.
    with sharding.axis_rules(self.mesh, sharding.logical_rules(self.config.fsdp)):
      return self._step(state, batch, index)


def _load_model(config, workdir: pathlib.Path, words) -> Tuple[rag_lib.RagModel, str]:
  """The RAG model and the directory of the document encoder's initial weights."""
  m = config.model
  dtype = DTYPES[m.dtype]
  rag_config = dict(n_docs=config.retrieval.k, max_combined_length=config.rag.max_combined_length,
                    label_smoothing=config.label_smoothing)
  if m.tiny:
    directory = tiny.write(workdir / "tiny_model", sorted(set(words) | set(TINY_PUNCTUATION) | set(config.data.label_words.values())),
                           seed=config.seed)
    question_encoder, generator = directory / "question_encoder", directory / "generator"
  elif m.rag_checkpoint:
    model = rag_lib.RagModel.from_pretrained(m.rag_checkpoint, dtype=dtype, **rag_config)
    return model, ""
  else:
    question_encoder, generator = m.question_encoder, m.generator
  model = rag_lib.RagModel.from_parts(question_encoder, generator, dtype=dtype, **rag_config)
  return model, str(question_encoder) if m.tiny else ""


def _for_training(model: rag_lib.RagModel, config) -> Tuple[rag_lib.Rag, Any]:
  """The Rag the step runs (remat, scanned layers) and the loaded params in its layout."""
  m = config.model
  modules = {"question_encoder": model.question_encoder, "generator": model.generator}
  params = dict(model.params)
  for name, module in modules.items():
    modules[name] = module.clone(remat=m.remat, scan_layers=m.scan_layers)
    if m.scan_layers:
      params[name] = scan.stack_layers(params[name], module)
  return rag_lib.Rag(modules["question_encoder"], modules["generator"], model.config), params


def inference_model(run: "Run", params) -> rag_lib.RagModel:
  """A RagModel over the run's current params for decoding (unscanned: cached decoding runs
  layer by layer)."""
  rag = run.rag
  if run.config.model.scan_layers:
    params = {name: scan.unstack_layers(params[name], getattr(rag, name))
              for name in ("question_encoder", "generator")}
    rag = rag_lib.Rag(rag.question_encoder.clone(scan_layers=False),
                      rag.generator.clone(scan_layers=False), rag.config)
  return rag_lib.RagModel(rag, params, run.question_tokenizer, run.generator_tokenizer)


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
  _check_passages(config)
  out = workdir / "index"
  if not (out / saved.MANIFEST).is_file():
    # Every process builds its own and renames it into place, the first rename winning: a
    # workdir may be shared by the hosts or local to each, and no process waits on another.
    encoder_dir = weights.resolve(r.doc_encoder or doc_encoder_dir)
    mine = workdir / f"index.{jax.process_index()}-{os.getpid()}"
    saved.build_index(r.passages, TextEncoder.from_pretrained(encoder_dir), encoder_dir, mine,
                      backend="exact", dtype="float32", progress=False, overwrite=True,
                      log=lambda m: None)
    try:
      os.rename(mine, out)
    except OSError:  # another process's index is there
      shutil.rmtree(mine)
  return saved.load_index(out, checksums=False)


def _check_passages(config) -> None:
  passages = config.retrieval.passages
  if not passages:
    raise SetupError("config retrieval.index or retrieval.passages must name the passages")
  if not pathlib.Path(passages).is_file():
    raise SetupError(f"{passages}: no such passage file (DPR's psgs_w100.tsv format; see the "
                     "config's docstring for where it comes from)")


def _read(config, split: str) -> List[data_lib.Example]:
  d = config.data
  options = {"two_way": d.two_way} if d.kind == "fever" else {}
  try:
    return data_lib.read(d.kind, d.path, split, **options)
  except data_lib.DataError as e:
    raise SetupError(str(e)) from None


def _target_fn(config, tokenizer) -> Callable[[data_lib.Example], str]:
  """Example -> its training target text. FEVER: the label's word, checked to be one token."""
  if config.data.kind != "fever":
    return lambda e: e.targets[0]
  words = dict(config.data.label_words)
  for label, word in words.items():
    n = len(tokenizer(word, add_special_tokens=False)["input_ids"])
    if n != 1:
      raise SetupError(f"config data.label_words[{label!r}]={word!r} is {n} tokens of the "
                       "generator's vocabulary; each label must be one token")
  return lambda e: words[e.label]


def build(config, workdir: pathlib.Path) -> Run:
  check_config(config)
  mesh = sharding.make_mesh(dict(config.mesh))
  if config.batch_size % sharding.data_size(mesh) or config.batch_size % jax.process_count():
    raise SetupError(f"config batch_size={config.batch_size} does not split over the "
                     f"{sharding.data_size(mesh)} data shards of the mesh")
  if config.eval_batch_size % sharding.data_size(mesh):
    raise SetupError(f"config eval_batch_size={config.eval_batch_size} does not split over the "
                     f"{sharding.data_size(mesh)} data shards of the mesh")
  train_examples = _read(config, config.data.train_split)
  eval_examples = _read(config, config.data.eval_split)
  if config.data.max_eval_examples:
    eval_examples = eval_examples[:config.data.max_eval_examples]
  words = []
  if config.model.tiny:  # its vocabulary: the words of the data and the passages
    _check_passages(config)
    from rag_jax.index import corpus  # pylint: disable=import-outside-toplevel
    words = data_lib.words([e.source for e in train_examples + eval_examples] +
                           [f"{p['title']} {p['text']}" for p in
                            corpus.read_passages(config.retrieval.passages)])
  model, doc_encoder_dir = _load_model(config, workdir, words)
  rag, params = _for_training(model, config)
  index = _index(config, workdir, doc_encoder_dir)
  if index.dim != rag.question_encoder.config.output_dim:
    raise SetupError(f"the index's vectors are {index.dim}-d, the query encoder's "
                     f"{rag.question_encoder.config.output_dim}-d")
  if config.retrieval.k > len(index.passages):
    raise SetupError(f"config retrieval.k={config.retrieval.k} exceeds the index's "
                     f"{len(index.passages)} passages")

  g_tok = model.generator_tokenizer
  fmt = input_pipeline.context_format(g_tok, config.rag.max_combined_length)
  target = _target_fn(config, g_tok)
  titles = input_pipeline.title_rows(index.passages)
  tokenize = lambda examples: Split(examples, input_pipeline.tokenize_examples(
      examples, question_tokenizer=model.question_tokenizer, generator_tokenizer=g_tok, fmt=fmt,
      max_question_length=config.rag.max_question_length,
      max_target_length=config.rag.max_target_length, target=target, title_rows=titles))
  passage_tokens, passage_length = input_pipeline.tokenize_passages(index.passages, g_tok,
                                                                    model.config, fmt)
  step_config = step_lib.StepConfig(kind=config.rag.kind, k=config.retrieval.k,
                                    label_smoothing=config.label_smoothing,
                                    doc_temperature=config.retrieval.doc_temperature,
                                    context=fmt)

  tx = step_lib.make_optimizer(config)
  state, state_sharding = _place_state(rag, params, tx, config, mesh)
  del params
  device_index = None
  if config.retrieval.mode == "device":
    device_index = step_lib.DeviceIndex.create(mesh, index.embeddings, passage_tokens,
                                               passage_length, config.retrieval.dtype)
  run = Run(config=config, mesh=mesh, rag=rag, question_tokenizer=model.question_tokenizer,
            generator_tokenizer=g_tok, step_config=step_config, state=state,
            train=tokenize(train_examples), eval=tokenize(eval_examples), index=index,
            passage_tokens=passage_tokens, passage_length=passage_length,
            device_index=device_index, target=target)
  run._step = step_lib.jit_train_step(rag, tx, step_config, state_sharding)
  run._encode = jax.jit(lambda p, b: step_lib.encode_questions(rag, p, b))
  run._retrieve = jax.jit(lambda p, b, i: step_lib.retrieve_on_device(rag, p, b, i,
                                                                      step_config.k))
  run._contexts = jax.jit(lambda p, b: step_lib.contexts_and_scores(rag, p, b, step_config))
  return run


def _place_state(rag: rag_lib.Rag, params, tx, config, mesh):
  """The train state on the mesh, with its shardings from the modules' logical axes."""
  ids = jnp.ones((1, 4), jnp.int32)
  boxed = jax.eval_shape(lambda: {
      "question_encoder": rag.question_encoder.init(jax.random.PRNGKey(0), ids, ids)["params"],
      "generator": rag.generator.init(jax.random.PRNGKey(0), ids, ids, ids)["params"]})
  abstract = jax.eval_shape(lambda: step_lib.create_state(boxed, tx, config.seed))
  shardings = sharding.shardings_for(mesh, abstract, sharding.logical_rules(config.fsdp))
  state = step_lib.create_state(params, tx, config.seed)
  return jax.device_put(state, shardings), shardings


def progress_bar(start: int, total: int):
  """tqdm on process 0 (a no-op elsewhere), from `start` of `total` steps."""
  import tqdm  # pylint: disable=import-outside-toplevel
  return tqdm.tqdm(initial=start, total=total, desc="train", unit="step", dynamic_ncols=True,
                   disable=jax.process_index() != 0, file=sys.stderr)
