"""The saved index: resumable embedding, build/load validation, CLI, hot-swapping."""

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import transformers

from conftest import randomize_, subprocess_env
from rag_jax import assets
from rag_jax.encoder import TextEncoder
from rag_jax.index import __main__ as index_cli
from rag_jax.index import backend as backend_lib
from rag_jax.index import corpus
from rag_jax.index import embed
from rag_jax.index import exact as exact_lib
from rag_jax.index import saved
from rag_jax.index import search as search_lib
from rag_jax.index.retriever import Retriever

WORDS = ("alpha beta gamma delta river mountain city king queen music art science war peace "
         "planet star ocean forest paper stone").split()


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory):
  """A random 2-layer BERT with mean pooling and its WordPiece vocabulary."""
  path = tmp_path_factory.mktemp("tiny_encoder")
  vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
  (path / "vocab.txt").write_text("\n".join(vocab) + "\n")
  transformers.BertTokenizerFast(str(path / "vocab.txt")).save_pretrained(path)
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2,
                                   num_attention_heads=2, intermediate_size=32,
                                   max_position_embeddings=128)
  randomize_(transformers.BertModel(config)).save_pretrained(path)
  return path


def _articles(path, n, seed=0):
  rng = np.random.default_rng(seed)
  with open(path, "w") as f:
    for i in range(n):
      text = " ".join(rng.choice(WORDS, size=int(rng.integers(20, 150))))
      f.write(json.dumps({"title": f"article {i}", "text": text}) + "\n")
  return path


def _store(tmp_path, n=40):
  store_dir = tmp_path / "store"
  corpus.write_passages(corpus.read_jsonl(_articles(tmp_path / "a.jsonl", n)), store_dir)
  return corpus.PassageStore(store_dir)


def test_interrupted_embedding_resumes_to_identical_vectors(tmp_path, tiny_encoder_dir):
  store = _store(tmp_path)
  encoder = TextEncoder.from_pretrained(tiny_encoder_dir, batch_size=8)
  full = embed.embed_store(store, encoder, tmp_path / "full", shard_size=16, progress=False,
                           dtype="float32")
  assert full.written == -(-len(store) // 16)
  part = embed.embed_store(store, encoder, tmp_path / "part", shard_size=16, progress=False,
                           dtype="float32", max_shards=1)      # "killed" after one shard
  assert part.written == 1 and not list((tmp_path / "part").glob(".*tmp*"))
  rest = embed.embed_store(store, encoder, tmp_path / "part", shard_size=16, progress=False,
                           dtype="float32")
  assert rest.skipped == 1 and rest.written == full.written - 1
  a = embed.load_embeddings(tmp_path / "full", len(store), encoder.dim, "float32", 16)
  b = embed.load_embeddings(tmp_path / "part", len(store), encoder.dim, "float32", 16)
  np.testing.assert_array_equal(a, b)
  # And the rows are the encoder's vectors of (title, text).
  row = store[5]
  ids = encoder.tokenizer([row["title"]], [row["text"]], truncation="only_second",
                          max_length=encoder.max_length)["input_ids"]
  np.testing.assert_allclose(a[5], encoder.encode_tokens(*encoder.pad(ids))[0], atol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_storage_dtypes_round_trip(dtype):
  x = np.random.default_rng(0).standard_normal((5, 7)).astype(np.float32)
  y = embed.from_storage(embed.to_storage(x, dtype), dtype)
  np.testing.assert_allclose(y, x, rtol=1e-2, atol=1e-2)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_encoder_dir):
  root = tmp_path_factory.mktemp("built")
  encoder = TextEncoder.from_pretrained(tiny_encoder_dir, batch_size=8)
  manifest = saved.build_index(_articles(root / "a.jsonl", 30), encoder, tiny_encoder_dir,
                               root / "index", shard_size=16, progress=False, log=lambda m: None)
  return root / "index", encoder, manifest


def test_build_writes_a_complete_manifest(built, tiny_encoder_dir):
  directory, encoder, manifest = built
  assert manifest["format_version"] == saved.FORMAT_VERSION
  assert manifest["dim"] == encoder.dim == 16 and manifest["count"] > 30
  assert manifest["metric"] == "inner_product" and manifest["backend"]["name"] == "scann"
  assert manifest["backend"]["params"]["brute_force"]  # the default, on a tiny corpus
  assert not (directory / saved.BUILD_KEY).exists() and saved.BUILD_KEY not in manifest["files"]
  assert manifest["encoder"]["weights_sha256"] == saved.encoder_identity(
      tiny_encoder_dir)["weights_sha256"]
  assert not directory.with_name("index.partial").exists()
  index = saved.load_index(directory, encoder=encoder, encoder_dir=tiny_encoder_dir)
  vectors = embed.load_embeddings(directory / "embeddings", manifest["count"], 16,
                                  manifest["dtype"], 16)
  q = encoder.encode(["river mountain", "king queen war"])
  scores, ids = index.search(q, 3)
  np.testing.assert_array_equal(ids, np.argsort(-(q @ vectors.T), axis=1)[:, :3])


def _copy(built, tmp_path):
  import shutil
  dst = tmp_path / "copy"
  shutil.copytree(built[0], dst)
  return dst


def test_loaded_vectors_are_searched_in_place_on_the_cpu(built):
  """load_embeddings aligns its array for XLA:CPU, so the exact backend's device chunks are
  that memory, not a second copy of the vectors (jax copies a misaligned host array)."""
  directory, _, manifest = built
  vectors = embed.load_embeddings(directory / "embeddings", manifest["count"], manifest["dim"],
                                  manifest["dtype"], manifest["shard_size"])
  assert vectors.ctypes.data % embed.ALIGN == 0
  index = exact_lib.ExactSearch(vectors, chunk_size=8)._index  # pylint: disable=protected-access
  assert len(index.embeddings) > 1
  assert [c.unsafe_buffer_pointer() for c in index.embeddings] == [
      vectors[i:].ctypes.data for i in range(0, len(vectors), index.chunk_rows)]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "manifest.json").write_text(json.dumps(
        {**json.loads((d / "manifest.json").read_text()), "format_version": 99})),
     "unknown format version 99"),
    (lambda d: (d / "embeddings" / "shard-00001.npy").write_bytes(
        (d / "embeddings" / "shard-00001.npy").read_bytes()[:100]), "shard-00001.npy: "),
    (lambda d: (d / "embeddings" / "shard-00000.npy").unlink(), "shard-00000.npy: missing file"),
    (lambda d: (d / "passages" / "passages.jsonl").unlink(), "passages.jsonl: missing file"),
    (lambda d: (d / "manifest.json").unlink(), "missing manifest"),
])
def test_damaged_index_fails_naming_the_file(built, tmp_path, damage, message):
  directory = _copy(built, tmp_path)
  damage(directory)
  with pytest.raises(saved.IndexError_, match=message.replace(".", r"\.")) as info:
    saved.load_index(directory, encoder=built[1])
  assert "\n" not in str(info.value)


def test_flipped_bits_fail_the_checksum(built, tmp_path):
  directory = _copy(built, tmp_path)
  path = directory / "embeddings" / "shard-00000.npy"
  data = bytearray(path.read_bytes())
  data[-3] ^= 0xFF
  path.write_bytes(bytes(data))
  with pytest.raises(saved.IndexError_, match="sha256 does not match"):
    saved.load_index(directory)


def test_encoder_mismatch_is_an_error(built, tmp_path):
  config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=16)
  other = tmp_path / "other"
  transformers.BertModel(config).save_pretrained(other)
  (other / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS))
  transformers.BertTokenizerFast(str(other / "vocab.txt")).save_pretrained(other)
  small = TextEncoder.from_pretrained(other)
  with pytest.raises(saved.IndexError_, match="encoder dimension 8 does not match"):
    saved.load_index(built[0], encoder=small)
  # Same dimension, other weights: refused by identity.
  config.hidden_size = 16
  transformers.BertModel(config).save_pretrained(other)
  with pytest.raises(saved.IndexError_, match="is not the one the index was built with"):
    saved.load_index(built[0], encoder=TextEncoder.from_pretrained(other), encoder_dir=other)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "rag_jax.index", *map(str, args)],
                        capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
def test_cli_build_search_inspect(tmp_path, tiny_encoder_dir, capsys):
  assets.fetch("all-MiniLM-L6-v2")  # the CLI finds it in the cache
  tsv = tmp_path / "psgs.tsv"
  tsv.write_text("id\ttext\ttitle\n"
                 "p1\tThe Nile flows north through Egypt into the Mediterranean.\tNile\n"
                 "p2\t\"Henry VIII had six wives, among them Anne Boleyn.\"\tHenry VIII\n"
                 "p3\tThe cello is a bowed string instrument.\tCello\n")
  out = tmp_path / "idx"
  proc = _cli("build", "--passages", tsv, "--encoder", "asset:all-MiniLM-L6-v2", "--out", out,
              "--no-progress", "--backend", "scann", "--recall-target", "0.99")
  assert proc.returncode == 0, proc.stderr
  manifest = json.loads((out / "manifest.json").read_text())
  assert manifest["backend"]["params"]["recall_target"] == 0.99
  proc = _cli("search", "--index", out, "--query", "How many wives did Henry VIII have?",
              "--query", "Which river runs through Egypt?", "-k", "2", "--json")
  assert proc.returncode == 0, proc.stderr
  results = [json.loads(line) for line in proc.stdout.strip().splitlines()]
  assert [r["hits"][0]["id"] for r in results] == ["p2", "p1"]
  assert results[0]["hits"][0]["title"] == "Henry VIII" and len(results[0]["hits"]) == 2
  assert set(results[0]["hits"][0]) >= {"id", "score", "title", "text"}
  proc = _cli("inspect", "--index", out)
  assert proc.returncode == 0 and "checksums ok" in proc.stdout
  # Bad input: one line, non-zero; the first through the command, the others through its
  # main in this process (the same code between the arguments and the exit status).
  proc = _cli("search", "--index", tmp_path / "nope", "--query", "x")
  errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert proc.returncode != 0 and len(errors) == 1, proc.stderr
  assert "no such index directory" in errors[0] and "Traceback" not in proc.stderr
  for args, message in (
      (("build", "--passages", tmp_path / "missing.tsv", "--encoder", tiny_encoder_dir,
        "--out", tmp_path / "idx2"), "missing.tsv: no such file"),
      (("build", "--passages", tsv, "--encoder", tiny_encoder_dir, "--out", out),
       "already exists"),
      (("build", "--passages", tsv, "--encoder", tiny_encoder_dir, "--out", tmp_path / "idx3",
        "--backend", "exact", "--recall-target", "0.9"), "applies to approx and scann"),
      (("search", "--index", out, "--query", "x", "-k", "4"), "exceeds the index's 3"),
      (("search", "--index", tsv, "--query", "x"), "psgs.tsv: not a directory"),
      (("build", "--passages", tsv, "--encoder", tiny_encoder_dir, "--out", tmp_path / "idx4",
        "--max-length", "0"), "--max-length must be at least 2")):
    try:
      status = index_cli.main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
      status = e.code
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("error: ")]
    assert status != 0 and len(errors) == 1, err
    assert message in errors[0] and "Traceback" not in err
  assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "psgs.tsv"]  # nothing partial


def _build(tmp_path, source, encoder_dir, **kwargs):
  encoder = TextEncoder.from_pretrained(encoder_dir, batch_size=8)
  logs = []
  manifest = saved.build_index(source, encoder, encoder_dir, tmp_path / "index", shard_size=16,
                               progress=False, log=logs.append, **kwargs)
  return manifest, logs


def _interrupted_build(tmp_path, source, encoder_dir, monkeypatch):
  """A build stopped after its first embedding shard, as a kill would leave it."""
  real = embed.embed_store

  def one_shard_then_stop(*args, **kwargs):
    real(*args, **{**kwargs, "max_shards": 1})
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(embed, "embed_store", one_shard_then_stop)
    with pytest.raises(KeyboardInterrupt):
      _build(tmp_path, source, encoder_dir)
  assert (tmp_path / "index.partial" / "embeddings" / "shard-00000.npy").is_file()


def test_interrupted_build_resumes_only_the_same_input(tmp_path, tiny_encoder_dir, monkeypatch):
  first = _articles(tmp_path / "first.jsonl", 30, seed=1)
  _interrupted_build(tmp_path, first, tiny_encoder_dir, monkeypatch)
  manifest, logs = _build(tmp_path, first, tiny_encoder_dir)  # the same input: resumed
  assert not any(l.startswith("passages:") for l in logs)
  assert any("1 resumed" in l for l in logs), logs
  (tmp_path / "fresh").mkdir()
  fresh, _ = _build(tmp_path / "fresh", first, tiny_encoder_dir)  # never interrupted
  data = lambda m: {f: v for f, v in m["files"].items() if not f.startswith("backend/")}
  assert data(manifest) == data(fresh)  # the same passages and vectors, byte for byte



@pytest.mark.parametrize("change", ["another file", "the same file rewritten", "touched",
                                    "a partial without a key", "another dtype"])
def test_a_partial_build_of_other_input_is_discarded(tmp_path, tiny_encoder_dir, monkeypatch,
                                                     change):
  first = _articles(tmp_path / "first.jsonl", 30, seed=1)
  _interrupted_build(tmp_path, first, tiny_encoder_dir, monkeypatch)
  source, kwargs = first, {}
  if change == "another file":
    source = _articles(tmp_path / "other.jsonl", 12, seed=2)
  elif change == "the same file rewritten":
    _articles(first, 12, seed=2)
  elif change == "touched":
    os.utime(first, ns=(0, 10**18))
  elif change == "a partial without a key":
    (tmp_path / "index.partial" / saved.BUILD_KEY).unlink()
  else:
    kwargs = {"dtype": "float32"}
  manifest, logs = _build(tmp_path, source, tiny_encoder_dir, **kwargs)
  assert any("starting afresh" in l for l in logs) and any("passages:" in l for l in logs)
  assert any(" 0 resumed" in l for l in logs), logs
  # Its own passages, none of the first build's.
  store = corpus.PassageStore(tmp_path / "index" / "passages")
  want = list(corpus.read_jsonl(source))
  assert [store[i]["text"] for i in range(len(store))] == [p["text"] for p in want]
  assert manifest["count"] == len(want)


def test_a_crash_while_renaming_into_place_resumes(tmp_path, tiny_encoder_dir, monkeypatch):
  source = _articles(tmp_path / "a.jsonl", 30)
  real = os.replace

  def fail_on_the_index(src, dst):
    if str(src).endswith("index.partial"):
      raise KeyboardInterrupt
    real(src, dst)
  with monkeypatch.context() as m:
    m.setattr(os, "replace", fail_on_the_index)
    with pytest.raises(KeyboardInterrupt):
      _build(tmp_path, source, tiny_encoder_dir)
  _, logs = _build(tmp_path, source, tiny_encoder_dir)  # the finished partial, resumed
  assert not any(l.startswith("passages:") for l in logs)
  assert any(" 0 shards written" in l for l in logs), logs
  assert not (tmp_path / "index" / saved.BUILD_KEY).exists()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "index"]


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ('{"title": "a", "text": "b c"}\nnot json\n', "line 2"),
    ("", "no passages"),
])
def test_failed_build_leaves_nothing(tmp_path, tiny_encoder_dir, content, message):
  source = tmp_path / "in.jsonl"
  if content is not None:
    source.write_text(content)
  with pytest.raises(ValueError, match=message):
    _build(tmp_path, source, tiny_encoder_dir)
  assert not (tmp_path / "index.partial").exists() and not (tmp_path / "index").exists()
  _build(tmp_path, _articles(source, 5), tiny_encoder_dir)  # and the next build goes through
  assert (tmp_path / "index" / saved.MANIFEST).is_file()


def test_cli_format_flags_and_a_missing_backend_library(tmp_path, tiny_encoder_dir, capsys,
                                                         monkeypatch):
  articles = _articles(tmp_path / "articles.txt", 5)  # JSONL under a suffix that says nothing
  common = ["--encoder", str(tiny_encoder_dir), "--no-progress"]
  assert index_cli.main(["build", "--articles", str(articles), "--out", str(tmp_path / "a"),
                         *common]) == 0
  assert json.loads((tmp_path / "a" / "manifest.json").read_text())["count"] >= 5
  # --passages reads DPR's TSV whatever the suffix: these JSON lines are not that.
  assert index_cli.main(["build", "--passages", str(articles), "--out", str(tmp_path / "b"),
                         *common]) == 1
  assert "line 1" in capsys.readouterr().err

  def missing():
    raise backend_lib.MissingDependencyError(
        "FaissHnswSearch needs faiss, which is not installed")
  monkeypatch.setitem(search_lib._IMPORTS, "faiss_hnsw", missing)
  assert index_cli.main(["build", "--articles", str(articles), "--out", str(tmp_path / "c"),
                         "--backend", "faiss_hnsw", *common]) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ["error: FaissHnswSearch needs faiss, which is not installed"]
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "articles.txt"]


def test_cli_builds_from_an_asset_corpus(tmp_path, tiny_encoder_dir, capsys, monkeypatch):
  """--articles asset:NAME: the asset's articles as JSONL (written once to the cache), the
  same passages and ids as --articles on that file; --help says how to get it."""
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path / "cache"))
  articles = [json.loads(line) for line in _articles(tmp_path / "a.jsonl", 6).open()]
  monkeypatch.setitem(corpus.ASSET_CORPORA, "wiki-summaries-en", lambda: articles)
  common = ["--encoder", str(tiny_encoder_dir), "--no-progress", "--backend", "exact"]
  assert index_cli.main(["build", "--articles", "asset:wiki-summaries-en", "--out",
                         str(tmp_path / "idx"), *common]) == 0
  source = corpus.resolve_source("asset:wiki-summaries-en")
  assert source.parent == tmp_path / "cache" / "corpora"
  manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
  assert manifest["source"] == str(source)
  with corpus.PassageStore(tmp_path / "idx" / "passages") as store:
    assert list(store) == list(corpus.read_jsonl(tmp_path / "a.jsonl"))
  capsys.readouterr()
  assert index_cli.main(["build", "--passages", "asset:wiki-summaries-en", "--out",
                         str(tmp_path / "idx2"), *common]) == 1
  assert capsys.readouterr().err.splitlines() == [
      "error: asset:wiki-summaries-en holds JSONL articles, not tsv passages"]
  with pytest.raises(SystemExit):
    index_cli.main(["build", "--help"])
  assert "asset:wiki-summaries-en is the embedded Wikipedia" in " ".join(
      capsys.readouterr().out.split())


def test_cli_search_questions_and_k(tmp_path, tiny_encoder_dir, capsys):
  """Blank queries are usage errors; k above the index is refused (as ask refuses it); a
  query past the encoder's max_length is truncated with a note."""
  assert index_cli.main(["build", "--articles", str(_articles(tmp_path / "a.jsonl", 3)),
                         "--encoder", str(tiny_encoder_dir), "--out", str(tmp_path / "idx"),
                         "--no-progress", "--backend", "exact"]) == 0
  count = json.loads((tmp_path / "idx" / "manifest.json").read_text())["count"]
  search = ["search", "--index", str(tmp_path / "idx")]
  capsys.readouterr()
  for args, status, message in (
      (["--query", " "], 2, "error: question 1 is blank"),
      (["--query", "alpha", "--query", ""], 2, "error: question 2 is empty"),
      (["--query", "alpha", "-k", str(count + 1)], 2,
       f"error: k={count + 1} exceeds the index's {count} passages"),
      (["--query", "alpha", "-k", "0"], 2, "error: k must be positive, got 0")):
    assert index_cli.main(search + args) == status
    assert capsys.readouterr().err.splitlines() == [message]
  assert index_cli.main(search + ["--query", "river " * 500, "-k", str(count)]) == 0
  out = capsys.readouterr()
  assert out.err.splitlines() == [
      "note: question 1 is 502 tokens long; truncated to the encoder's max_length, 128"]
  assert out.out.startswith("Q: river river") and "..." in out.out.splitlines()[0]


def test_cli_interrupted_build_is_one_line(tmp_path, tiny_encoder_dir, capsys, monkeypatch):

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(saved, "build_index", interrupted)
  articles = _articles(tmp_path / "a.jsonl", 3)
  assert index_cli.main(["build", "--articles", str(articles), "--out", str(tmp_path / "i"),
                         "--encoder", str(tiny_encoder_dir)]) == 130
  assert capsys.readouterr().err.splitlines() == [
      "error: interrupted; the same command resumes from the finished embedding shards"]


def test_skipped_lines_are_logged(tmp_path, tiny_encoder_dir):
  source = tmp_path / "a.jsonl"
  source.write_text('{"title": "a", "text": "b c"}\nnot json\n[]\n')
  _, logs = _build(tmp_path, source, tiny_encoder_dir, on_error="skip")
  assert "passages: 1 written (2 malformed lines skipped)" in logs
  assert [m for m in logs if m.startswith("  skipped ")] == [
      f"  skipped {source}: line 2: bad JSON (Expecting value: column 1)",
      f"  skipped {source}: line 3: expected a JSON object, got list"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_index_files_follow_the_umask(tmp_path, tiny_encoder_dir, umask):
  old = os.umask(umask)
  try:
    _build(tmp_path, _articles(tmp_path / "a.jsonl", 5), tiny_encoder_dir)
  finally:
    os.umask(old)
  files = [p for p in (tmp_path / "index").rglob("*") if p.is_file()]
  assert {p.name for p in files} >= {saved.MANIFEST, "passages.jsonl"}
  assert {p.relative_to(tmp_path): oct(p.stat().st_mode & 0o777) for p in files} == {
      p.relative_to(tmp_path): oct(0o666 & ~umask) for p in files}


def test_hot_swap_answers_follow_the_new_index(tmp_path):
  minilm = assets.fetch("all-MiniLM-L6-v2")
  encoder = TextEncoder.from_pretrained(minilm, batch_size=8)
  old_facts = [{"title": "Mars", "text": "Mars is the fourth planet from the Sun."},
               {"title": "Violin", "text": "The violin is a wooden string instrument."}]
  new_facts = old_facts + [{"title": "Lunar base",
                            "text": "In 2031 the first permanent base on the Moon was opened."}]
  indexes = []
  for name, facts in (("old", old_facts), ("new", new_facts)):
    src = tmp_path / f"{name}.jsonl"
    src.write_text("".join(json.dumps(f) + "\n" for f in facts))
    saved.build_index(src, encoder, minilm, tmp_path / name, dtype="float32", progress=False,
                      log=lambda m: None)
    indexes.append(saved.load_index(tmp_path / name, encoder=encoder, encoder_dir=minilm))
  retriever = Retriever(encoder, indexes[0])
  question = ["When was the first permanent base on the Moon opened?"]
  assert retriever.retrieve(question, k=1)[0]["hits"][0]["title"] != "Lunar base"

  # A search that is running when the swap happens finishes on the old index.
  started, release = threading.Event(), threading.Event()
  slow_old = indexes[0]
  original = slow_old.search

  def slow_search(q, k):
    started.set()
    release.wait(10)
    return original(q, k)
  slow_old.search = slow_search
  results = {}
  worker = threading.Thread(target=lambda: results.update(r=retriever.retrieve(question, k=1)))
  worker.start()
  started.wait(10)
  retriever.swap(indexes[1])
  release.set()
  worker.join(10)
  assert results["r"][0]["index"].endswith("old")
  answer = retriever.retrieve(question, k=1)[0]
  assert answer["index"].endswith("new") and answer["hits"][0]["title"] == "Lunar base"


@pytest.mark.slow
def test_data_parallel_and_multi_process_embedding_match_one_device(tmp_path, tiny_encoder_dir):
  store = _store(tmp_path, n=25)
  encoder = TextEncoder.from_pretrained(tiny_encoder_dir, batch_size=8)
  embed.embed_store(store, encoder, tmp_path / "one", shard_size=16, progress=False,
                    dtype="float32")
  reference = embed.load_embeddings(tmp_path / "one", len(store), 16, "float32", 16)
  # 8 (fake CPU) devices, and two "hosts" each writing their slice of the shards, in a
  # subprocess: the device count is fixed when jax starts.
  script = f"""
import jax
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus, embed
assert len(jax.local_devices()) == 8
store = corpus.PassageStore({str(tmp_path / 'store')!r})
encoder = TextEncoder.from_pretrained({str(tiny_encoder_dir)!r}, batch_size=8)
split = encoder.data_parallel()  # split over the same devices again: the same encoder
assert split.data_parallel() is split and split.data_parallel(jax.local_devices()[:4]) is not split
for p in (0, 1):
  embed.embed_store(store, encoder, {str(tmp_path / 'eight')!r}, shard_size=16, progress=False,
                    dtype="float32", process_index=p, process_count=2)
"""
  proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(devices=8),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr
  eight = embed.load_embeddings(tmp_path / "eight", len(store), 16, "float32", 16)
  np.testing.assert_allclose(eight, reference, atol=1e-5)
