"""rag_jax.train in-process on experiments/fever.py:tiny: the loss falls, device = host
retrieval, the gradient reaches the query encoder and not the passages, bad input and a NaN
loss fail in one line, the contexts are the whole strings' tokens, the optimizer's parts. What
needs processes of its own (8 devices, SIGKILL, SIGTERM, exit codes) is in
test_train_processes.py."""

import json
import pathlib
import sys
import types

import jax
import numpy as np
import pytest

from conftest import task_config, whole_prompts
from rag_jax import checkpoint
from rag_jax import contexts
from rag_jax import errors
from rag_jax.model import RagModel
from rag_jax.train import loop
from rag_jax.train import optimizer
from rag_jax.train import setup
from rag_jax.train import step as step_lib

# A short run: every step logged, checkpoints at 3 and 6, one eval at the end.
SHORT = {"num_train_steps": 6, "log_every_steps": 1, "checkpoint_every_steps": 3,
         "eval_every_steps": 6, "data.max_eval_examples": 8}


def _losses(workdir):
  lines = [json.loads(l) for l in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  by_step = {}
  for line in lines:  # a resumed run logs its steps after the checkpoint again: keep the last
    if "loss" in line:
      by_step[line["step"]] = line["loss"]
  return [by_step[s] for s in sorted(by_step)]


def _config(**overrides):
  return task_config("fever", **{**SHORT, **overrides})


@pytest.mark.slow
def test_tiny_run_learns_and_moves_only_the_query_encoder_and_generator(tmp_path):
  workdir = tmp_path / "run"
  out = loop.train_and_evaluate(_config(num_train_steps=24, log_every_steps=6,
                                        checkpoint_every_steps=24, eval_every_steps=24),
                                workdir)
  losses = _losses(workdir)
  assert len(losses) == 4 and losses[-1] < 0.85 * losses[0], losses
  assert out["ended"] == "finished" and out["step"] == 24
  for key in ("eval/label_accuracy", "eval/entropy", "eval/distinct_top1", "eval/recall_at_k"):
    assert np.isfinite(out[key]), key
  assert list((workdir / "tensorboard").iterdir())
  # Trainable: exactly the query encoder and the generator; both moved.
  state = out["state"]
  assert set(state.params) == {"question_encoder", "generator"}
  start = RagModel.from_parts(workdir / "tiny_model" / "question_encoder",
                              workdir / "tiny_model" / "generator").params
  for part in ("question_encoder", "generator"):
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(state.params[part]), jax.tree.leaves(start[part]))]
    assert max(moved) > 1e-4, part
  # The query encoder learned through the doc scores: its projection-free CLS vectors moved.
  # The passages' vectors (the frozen index) are bit for bit those the index was built with.
  from rag_jax.index import saved  # pylint: disable=import-outside-toplevel
  index = saved.load_index(workdir / "index")
  assert index.manifest["files"]  # checksums verified by load_index: nothing rewrote them


@pytest.mark.slow
def test_batch_shapes_are_those_of_tokenize_examples_rows(tmp_path):
  """rag_jax.compile lowers the step from `input_pipeline.batch_shapes`: the shapes and dtypes
  of a batch gathered from `tokenize_examples`' arrays."""
  from rag_jax.data import Example  # pylint: disable=import-outside-toplevel
  from rag_jax.train import input_pipeline  # pylint: disable=import-outside-toplevel
  from rag_jax.weights import tiny  # pylint: disable=import-outside-toplevel
  directory = tiny.write(tmp_path / "m", "alpha beta gamma king queen".split())
  model = RagModel.from_parts(directory / "question_encoder", directory / "generator",
                              max_combined_length=12)
  fmt = model.context_format()
  examples = [Example(str(i), q, ("king",)) for i, q in enumerate(["alpha", "beta gamma", "q"])]
  arrays = input_pipeline.tokenize_examples(
      examples, question_tokenizer=model.question_tokenizer,
      generator_tokenizer=model.generator_tokenizer, rag_config=model.config, fmt=fmt,
      target_format=input_pipeline.TargetFormat.of(model.generator_tokenizer, model.rag.gen),
      max_question_length=8, max_target_length=5, target=lambda e: e.targets[0])
  batch = input_pipeline.gather(arrays, np.array([0, 2]))
  want = input_pipeline.batch_shapes(2, fmt, max_question_length=8, max_target_length=5)
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (shape, np.dtype(dtype)) for k, (shape, dtype) in want.items()}


@pytest.mark.slow
def test_device_and_host_retrieval_give_the_same_losses(tmp_path):
  device = loop.train_and_evaluate(_config(**{"retrieval.mode": "device"}), tmp_path / "d")
  host = loop.train_and_evaluate(_config(**{"retrieval.mode": "host"}), tmp_path / "h")
  np.testing.assert_allclose(_losses(tmp_path / "h"), _losses(tmp_path / "d"), rtol=1e-6)
  for key in ("eval/label_accuracy", "eval/recall_at_k", "eval/distinct_top1"):
    assert host[key] == device[key], key


@pytest.mark.parametrize("overrides, message", [
    ({"data.path": "/nonexistent/{split}.jsonl"}, "/nonexistent/train.jsonl: no such file"),
    ({"retrieval.passages": "/nonexistent.tsv"}, "/nonexistent.tsv: no such passage file"),
    ({"data.label_words.SUPPORTS": "true false"}, "each label must be one token"),
    ({"batch_size": 100}, "batch_size 100 exceeds the 48 training examples"),
])
def test_bad_input_is_a_one_line_error(tmp_path, overrides, message):
  """What `python -m rag_jax.train` prints as its one line (`errors.first_line`) before it
  exits 1, as test_train_processes's subprocess cases show for the same path."""
  with pytest.raises((setup.SetupError, ValueError)) as e:
    loop.train_and_evaluate(_config(**overrides), tmp_path / "w")
  assert len(str(e.value).strip().splitlines()) == 1 and message in errors.first_line(e.value)


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
  # A learning rate of 1e30 blows the params up within a few steps.
  with pytest.raises(loop.TrainingError) as e:
    loop.train_and_evaluate(_config(learning_rate=1e30, max_grad_norm=1e30,
                                    checkpoint_every_steps=1, num_train_steps=40,
                                    warmup_steps=1), tmp_path / "nan")
  line = str(e.value)
  assert len(line.splitlines()) == 1 and " is nan at step " in line, line
  bad = int(line.split(" at step ")[1].split(";")[0])
  saved = sorted(int(p.name) for p in (tmp_path / "nan" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved and saved[-1] < bad


def _unpad(ids, mask):
  """Each row's tokens under its mask."""
  return [list(np.asarray(r)[np.asarray(m) == 1]) for r, m in zip(ids, mask)]


@pytest.mark.slow
def test_contexts_are_hf_tokenization_of_the_whole_string(tmp_path):
  """The one path from passages to contexts (tokenized parts joined: RagModel.contextualize,
  as the step and evaluation join them) gives the tokens of HF's RagRetriever, which
  tokenizes each whole `title / text // question` string, truncated and padded."""
  from rag_jax.weights import tiny  # pylint: disable=import-outside-toplevel
  words = "alpha beta gamma delta river king queen star".split() + ["/"]
  directory = tiny.write(tmp_path / "m", words)
  model = RagModel.from_parts(directory / "question_encoder", directory / "generator",
                              max_combined_length=12)
  tok, cfg = model.generator_tokenizer, model.config
  passages = [{"title": "Alpha", "text": "beta gamma"}, {"title": "River king", "text": "queen"},
              {"title": "Star", "text": "delta " * 9}]  # the last truncates the question away
  questions = ["gamma star", "king"]
  rows = np.array([[0, 2], [1, 0]])
  ids, mask = model.contextualize(questions, [[passages[i] for i in r] for r in rows])
  want = tok([contexts.format_context(passages[i]["title"], passages[i]["text"], q, cfg)
              for q, r in zip(questions, rows) for i in r], max_length=cfg.max_combined_length,
             padding="max_length", truncation=True, return_tensors="np")
  np.testing.assert_array_equal(ids, want["input_ids"])
  np.testing.assert_array_equal(mask, want["attention_mask"])
  # Closed book: the question alone, after the config's prefix.
  ids, mask = model.contextualize(questions, None)
  want = tok([contexts.closed_book_context(q, cfg) for q in questions],
             max_length=cfg.max_combined_length, padding="max_length", truncation=True,
             return_tensors="np")
  np.testing.assert_array_equal(ids, want["input_ids"])


@pytest.mark.slow
def test_scanned_layers_train_and_decode(tmp_path):
  out = loop.train_and_evaluate(_config(**{"model.scan_layers": True, "model.remat": "dots"}),
                                tmp_path / "scan")
  losses = _losses(tmp_path / "scan")
  assert len(losses) == 6 and all(np.isfinite(losses)) and losses[-1] < losses[0], losses
  assert np.isfinite(out["eval/label_accuracy"])  # decoding ran on the unstacked params
  stacked = out["state"].params["generator"]["encoder_layers"]
  assert "encoder_layers_0" not in out["state"].params["generator"]
  assert jax.tree.leaves(stacked)[0].shape[0] == 2  # the tiny BART's two layers, stacked


# ------------------------------------------------------------------------------------------
# A decoder-only generator (a tiny Llama with a chat template, tokenized as SmolLM2 is).


@pytest.mark.slow
def test_decoder_only_contexts_and_labels_are_the_prompts_and_answers(tmp_path):
  """The step's joined contexts (tokenize_examples' question tokens joined with the passages')
  are the tokens of each whole chat prompt, RAG and closed book, and so are
  RagModel.contextualize's; labels are start + answer + EOS."""
  # pylint: disable=import-outside-toplevel
  from rag_jax import prompts
  from rag_jax.weights import tiny
  from rag_jax.train import input_pipeline
  from rag_jax.data import Example
  words = "alpha beta gamma delta river king queen star who what".split()
  directory = tiny.write(tmp_path / "m", words, generator_kind="llama")
  model = RagModel.from_parts(directory / "question_encoder", directory / "generator",
                              max_combined_length=40)
  tok, cfg, gen = model.generator_tokenizer, model.config, model.rag.gen
  model.prompt_format = prompts.chat_prompt(tok, system="alpha")
  fmt = contexts.context_format(tok, cfg.max_combined_length, model.prompt_format)
  assert fmt.prefix[0] == tok.bos_token_id and fmt.suffix[0] == tok.eos_token_id
  passages = [{"title": "Alpha", "text": "beta gamma"}, {"title": "River king", "text": "queen"},
              {"title": "Star", "text": "delta " * 30}]  # the last truncates the question away
  examples = [Example("0", "who gamma star", ("king queen",)), Example("1", "what king", ("",))]
  target = input_pipeline.TargetFormat.of(tok, gen)
  arrays = input_pipeline.tokenize_examples(
      examples, question_tokenizer=model.question_tokenizer, generator_tokenizer=tok,
      rag_config=cfg, fmt=fmt, target_format=target, max_question_length=8, max_target_length=5,
      target=lambda e: e.targets[0])
  king, queen = tok.convert_tokens_to_ids(["king", "queen"])
  np.testing.assert_array_equal(arrays["labels"], [
      [gen.start_token_id, king, queen, gen.eos_token_id, gen.pad_token_id],
      [gen.start_token_id, gen.eos_token_id, gen.pad_token_id, gen.pad_token_id,
       gen.pad_token_id]])
  tokens, lengths = contexts.tokenize_passages(passages, tok, cfg, fmt)
  rows = np.array([[0, 2], [1, 0]])
  ids, mask = contexts.join_contexts(tokens[rows], lengths[rows], arrays["question_tokens"],
                                     arrays["question_length"], fmt)
  assert (np.asarray(mask)[:, 0] == 1).all()  # right-padded
  render = lambda title, text, q: model.prompt_format(contexts.format_context(title, text, q, cfg))
  want = whole_prompts(tok, [(passages[i]["title"], passages[i]["text"], e.source)
                             for e, r in zip(examples, rows) for i in r], render,
                       limit=cfg.max_combined_length, pad_token_id=gen.pad_token_id)
  assert _unpad(ids, mask) == _unpad(*want)
  assert _unpad(ids, mask) == _unpad(*model.contextualize(
      [e.source for e in examples], [[passages[i] for i in r] for r in rows]))
  # Closed book: no passage, the question alone.
  closed = input_pipeline.tokenize_examples(
      examples, question_tokenizer=model.question_tokenizer, generator_tokenizer=tok,
      rag_config=cfg, fmt=fmt, target_format=target, max_question_length=8,
      max_target_length=5, target=lambda e: e.targets[0], closed_book=True)
  ids, mask = contexts.join_contexts(tokens[:2, None], np.zeros((2, 1), np.int32),
                                     closed["question_tokens"], closed["question_length"], fmt)
  closed_render = lambda title, text, q: model.prompt_format(contexts.closed_book_context(q, cfg))
  want = whole_prompts(tok, [("", "", e.source) for e in examples], closed_render,
                       limit=cfg.max_combined_length, pad_token_id=gen.pad_token_id)
  assert _unpad(ids, mask) == _unpad(*want)
  assert _unpad(ids, mask) == _unpad(*model.contextualize([e.source for e in examples], None))


@pytest.mark.slow
def test_smollm2_contexts_joined_in_the_step_are_its_tokens_of_each_whole_prompt(tmp_path):
  """BPE boundaries: SmolLM2's own tokenizer, its chat template and the `:wiki` separators;
  real articles (unicode, digits, brackets), one long enough to be truncated."""
  # pylint: disable=import-outside-toplevel
  from rag_jax import assets, prompts
  from rag_jax.weights import tiny
  directory = tiny.write(tmp_path / "m", ["who", "what"])
  model = RagModel.from_parts(directory / "question_encoder",
                              "asset:smollm2-135m-instruct", max_combined_length=96,
                              title_sep=": ", doc_sep="\n\nQuestion: ")
  tok, cfg = model.generator_tokenizer, model.config
  prompts.use_chat_template(model, "Answer in English, in a few words.")
  fmt = contexts.context_format(tok, cfg.max_combined_length, model.prompt_format,
                                pad_id=model.rag.gen.pad_token_id)
  articles = {a["title"]: a for a in assets.wiki_summaries()}
  passages = [{"title": t, "text": " ".join(articles[t]["text"].split()[:n])} for t, n in
              (("Mona Lisa", 40), ("Antonín Dvořák", 30), ("Albert Einstein", 200), ("1", 25))]
  questions = ["Who painted the Mona Lisa (c. 1503)?", "Who wrote Rusalka – an opera?"]
  rows = np.array([[0, 2], [1, 3]])
  ids, mask = model.contextualize(questions, [[passages[i] for i in r] for r in rows])
  render = lambda title, text, q: model.prompt_format(contexts.format_context(title, text, q, cfg))
  want = whole_prompts(tok, [(passages[i]["title"], passages[i]["text"], q)
                             for q, r in zip(questions, rows) for i in r], render,
                       limit=cfg.max_combined_length, pad_token_id=model.rag.gen.pad_token_id)
  assert np.asarray(mask).sum(axis=1)[1] == fmt.length  # Einstein's passage was cut
  assert _unpad(ids, mask) == _unpad(*want)


@pytest.mark.slow
def test_tiny_llama_learns_training_only_its_top_layer_and_closed_book_no_retriever(tmp_path):
  llama = {"model.tiny_generator": "llama", "model.train_generator_layers": 1,
           "num_train_steps": 24, "log_every_steps": 6, "checkpoint_every_steps": 24,
           "eval_every_steps": 24, "data.max_eval_examples": 8}
  runs = {}
  for mode in ("device", "none"):
    workdir = tmp_path / mode
    runs[mode] = loop.train_and_evaluate(_config(**llama, **{"retrieval.mode": mode}),
                                         workdir)
    losses = _losses(workdir)
    # One layer of 2 trains, over frozen random embeddings: slower than the whole tiny BART.
    assert len(losses) == 4 and losses[-1] < 0.95 * losses[0], (mode, losses)
    start = RagModel.from_parts(workdir / "tiny_model_llama" / "question_encoder",
                                workdir / "tiny_model_llama" / "generator").params
    params = runs[mode]["state"].params
    flat = lambda tree: {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
                         for path, v in jax.tree_util.tree_leaves_with_path(tree)}
    now, before = flat(params), flat(start)
    moved = {name for name in now if not np.array_equal(now[name], before[name])}
    trained = {n for n in now if n.startswith(("generator/layers_1/", "generator/norm/"))}
    if mode == "device":  # the query encoder learns through the doc scores
      trained |= {n for n in now if n.startswith("question_encoder/")}
    assert moved == trained, (mode, sorted(moved ^ trained)[:5])
    records = [json.loads(l) for l in
               (workdir / "eval" / "step_24" / "predictions.jsonl").read_text().splitlines()]
    assert all(bool(r["passages"]) == (mode == "device") for r in records)


def test_optimizer_scales_the_query_encoders_rate_clips_globally_and_freezes():
  """make_optimizer against optax's own clip + AdamW per part: the query encoder's updates are
  those of learning_rate * question_encoder_lr_scale, the clipping norm is over every trained
  gradient, and a frozen prefix gets no update."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, question_encoder_lr_scale=0.1, warmup_steps=2, num_train_steps=6,
      decay="linear", weight_decay=0.01, max_grad_norm=0.5, adam_b1=0.9, adam_b2=0.999,
      adam_eps=1e-8))
  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
  params = {"question_encoder": {"w": normal(3, 2)},
            "generator": {"top": normal(4), "embed": normal(5)}}
  grads = [jax.tree.map(lambda p: normal(*p.shape), params) for _ in range(4)]
  for g in grads:
    g["generator"]["embed"] = np.zeros(5, np.float32)  # the step stops a frozen one's gradient

  def reference(lr, part):
    sched = optax.join_schedules([optax.linear_schedule(0.0, lr, 2),
                                  optax.linear_schedule(lr, 0.0, 4)], [2])
    adam = optax.adamw(sched, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01)
    state, p = adam.init(params[part]), params[part]
    for g in grads:
      norm = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(g)))
      clipped = jax.tree.map(lambda x, n=norm: x * min(1.0, 0.5 / n), g[part])
      updates, state = adam.update(clipped, state, p)
      p = optax.apply_updates(p, updates)
    return p

  tx = optimizer.make_optimizer(config, frozen=("generator/embed",))
  state, p = tx.init(params), params
  for g in grads:
    updates, state = tx.update(g, state, p)
    p = optax.apply_updates(p, updates)
  np.testing.assert_allclose(p["question_encoder"]["w"], reference(1e-3, "question_encoder")["w"],
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(p["generator"]["top"], reference(1e-2, "generator")["top"],
                             rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(p["generator"]["embed"], params["generator"]["embed"])
  assert not np.allclose(p["question_encoder"]["w"], reference(1e-2, "question_encoder")["w"])


def test_a_checkpoint_of_another_optimizer_layout_is_a_clear_error(tmp_path):
  """orbax would restore it, the optimizer state of a param frozen since coming back as None:
  restore_latest refuses it, naming the directory."""
  import ml_collections  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(dict(
      learning_rate=1e-2, warmup_steps=1, num_train_steps=2, decay="linear", weight_decay=0.0,
      max_grad_norm=1.0, adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8))
  params = {"question_encoder": {"w": np.ones(3, np.float32)},
            "generator": {"top": np.ones(2, np.float32), "embed": np.ones(4, np.float32)}}
  state = lambda frozen: step_lib.create_state(params, optimizer.make_optimizer(config, frozen), 0)
  manager = checkpoint.Manager(tmp_path / "checkpoints", keep=1)
  manager.save(1, state(()))
  manager.wait()
  assert manager.restore_latest(state(())) is not None
  with pytest.raises(checkpoint.CheckpointError,
                     match="checkpoints: the checkpoint of step 1 holds .* another model or optimizer"):
    manager.restore_latest(state(("generator/embed",)))
  manager.close()


def test_a_failed_restore_quiets_only_its_abandoned_reads(monkeypatch):
  """The "Event loop is closed" reports of a failed restore's leftover reads are dropped
  (test_faults checks that no traceback reaches the user); every other report goes through."""
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  checkpoint._quiet_abandoned_reads()  # pylint: disable=protected-access
  checkpoint._quiet_abandoned_reads()  # once is enough: not wrapped twice
  report = lambda e: types.SimpleNamespace(exc_type=type(e), exc_value=e)
  sys.unraisablehook(report(RuntimeError("Event loop is closed")))
  other = [report(RuntimeError("something else")), report(ValueError("Event loop is closed"))]
  for r in other:
    sys.unraisablehook(r)
  assert seen == other
