"""The index as the corpus grows: embedding throughput, `exact` and ScaNN build time, memory,
QPS and recall at 10k, 100k and 1M passages, and what the fitted cost curves predict for the
paper's 21,015,300 x 768 index.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--dim 384]
                               [--wide-sizes 10000,100000] [--wide-dim 768]
                               [--queries 1000] [--repeats 3] [--passages 1024]
                               [--base-passages 256] [--min-words 90]
                               [--encoder asset:all-MiniLM-L6-v2]
                               [--articles asset:wiki-summaries-en] [--index DIR] [--json]

Search. There is no text for a million passages here, so the vectors are synthetic (see
"Vectors"). For each N x D, each backend runs in a process of its own, so that its memory is
its own: the vectors are made, then the backend is built as `python -m rag_jax.index build
--backend exact|scann` builds it (`search.build(name, vectors)`, its defaults: ScaNN picks its
tree from N and tunes the leaves it searches to recall@10 0.95), and `--queries` queries are
searched for their top 10 in one call, `--repeats` times after an untimed call (the median is
kept). Reported per backend:
  build s       `search.build`'s wall time (ScaNN's includes choosing its hashing threshold
                and tuning the leaves it searches, as a build does);
  index MB      what the backend holds: exact, its device arrays (N x D float32); ScaNN, the
                files of `ScannSearch.save` (a saved index's `backend/`: its own float32
                copy of the rows for rescoring, their hash codes, the tree);
  RSS MB        resident memory the process gained from the build (after it) and at its
                peak (build and searches; the peak counter is reset once the vectors are
                made, via /proc/self/clear_refs). Neither counts the N x D float32 vectors
                themselves, which a loaded index holds too (`saved.Index.embeddings`);
  QPS           queries / the median seconds of one call;
  recall@10     of ScaNN against exact's top 10, on the same queries;
  load          the machine's 1-minute load average when the child ended (2 cores: above 2,
                other work was sharing them; the figures carry that noise).
The ratios put ScaNN beside exact at each size: QPS, index, and peak RSS with the vectors.

Vectors. `vectors(num, dim)`: unit vectors of a mixture of topics, each of 16 subtopics,
about a direction shared by all. A topic's centre is drawn about the shared direction, its
subtopics' about it, and a vector about its subtopic's centre; all in one random rotation,
the centres along a power-law spectrum (variance along the i-th axis ~ i^-0.62), a vector's
offset from its subtopic along a steeper one (i^-1). The number of topics grows as sqrt(N),
64 at 12,324 rows (`topics`), as a text's vocabulary grows with its length (Heaps' law). Why
this and not something simpler, measured with ScaNN's default (its tree of 1.6 sqrt(N)
leaves, the leaves searched tuned to recall@10 0.95):
  - isotropic Gaussian unit vectors have no near neighbours (the nearest at cosine ~0.2 at
    12,324 x 384): ScaNN searched all 178 leaves and reached 0.93;
  - a fixed set of clusters gets easier as N grows: at 100k, each of 64 x 16 subtopics is a
    dense blob that the tree holds in one leaf, and 2 of 506 leaves reached 0.95. With the
    topics growing as sqrt(N), as the leaves do, it took 12;
  - the offsets within a subtopic are continuous, so that at no size has the data gaps that
    the tree's cells can follow.
The spreads (SPREADS), the shared direction (SHARED) and the spectra were chosen on MiniLM's
vectors of the 12,324 passages of the embedded Wikipedia (the index `ask` caches): at that
size ScaNN searches 26 of 178 leaves of the synthetic vectors and 21 of the real ones, and
the recall with 2 to 40 leaves searched and the median cosine of a vector to its 1st, 10th
and 100th neighbour are close (RESULTS.md has the figures). `--index DIR` measures a saved
index's own vectors ("index"; queries: held-out rows plus noise, `ann.split_queries`) beside
synthetic ones of the same count ("twin"), to see how far the stand-in is from them. 768-d
vectors come from the same recipe in 768 dimensions. Queries are fresh draws from the same
distribution (another seed).

Embedding. `embed.embed_store`, as `index build` runs it (one XLA CPU device per core,
batches of 64 sorted by length, each padded to its power-of-two bucket, float16 shards
written), timed after an untimed pass that compiles every bucket: the document encoder
(`--encoder`, MiniLM) over `--passages` passages, and the shapes of DPR's BERT-base document
encoder, which built the paper's 768-d index, with random weights and the same tokenizer
(MiniLM's is bert-base-uncased's vocabulary; the time does not depend on the weights) over
`--base-passages`. The passages are drawn at random from those of the `--articles` corpus,
split as `index build` splits it, that have at least `--min-words` words: DPR's passages are
100 words, where the embedded Wikipedia's average 63 (of its 12,324, 1,070 have 90 or more),
and a passage's cost follows its tokens.

Prediction. Memory and exact's search time are fitted as a + b x, x = N x D (the floats held
or scanned), over every synthetic row of both dims; ScaNN's search and build time as c N^p
over the --dim rows, then times 768 / --dim (their scoring, rescoring and k-means are linear
in D; the ratio measured between the 768-d and 384-d rows is printed beside, not used: the
leaves ScaNN must search depend on the vectors, and the 768-d stand-in is not fitted to any
real 768-d vectors). All at N = 21,015,300, D = 768; embedding time is N / the measured
passages/s. The machine is shared and has 2 cores: one run's figures are what that run
measured, and the extrapolation is 21x past the largest size measured.

Output: a table and the prediction's arithmetic on stdout (progress on stderr); with --json,
one JSON object: {"rows", "embedding", "fits", "prediction"}.
"""
# pylint: disable=protected-access,import-outside-toplevel

import argparse
import functools
import json
import math
import os
import pathlib
import sys
import tempfile
import time
from typing import Optional

import numpy as np

import ann
import common

K = 10
TARGET_NUM = 21_015_300  # DPR's Wikipedia passages (psgs_w100.tsv), the paper's index
TARGET_DIM = 768
SEED = 0
BLOCK = 4096  # rows drawn per seed (see `vectors`)
# The synthetic vectors (see the module docstring): topics (TOPICS at CALIBRATION rows, as
# sqrt(N) elsewhere) of SUBTOPICS each. SPREADS: the spread of a topic's centre about the
# shared direction, of a subtopic's about its topic's, of a vector about its subtopic's.
TOPICS, CALIBRATION, SUBTOPICS = 64, 12_324, 16
SPREADS = (0.6, 0.85, 0.85)
SPECTRUM, OFFSET_SPECTRUM = 0.62, 1.0
SHARED = 0.31


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def topics(num: int) -> int:
  """The synthetic vectors' topics at `num` rows: TOPICS x sqrt(num / CALIBRATION)."""
  return max(1, round(TOPICS * math.sqrt(num / CALIBRATION)))


def _basis(rotation: np.ndarray, power: float) -> np.ndarray:
  """[dim, dim]: standard normal rows times it have variance ~ i^-power along the i-th axis
  of `rotation`, and 1 in all."""
  scale = np.arange(1, len(rotation) + 1) ** (-power / 2)
  return (scale / np.linalg.norm(scale))[:, None] * rotation.T


@functools.lru_cache(maxsize=2)
def _rotation(dim: int) -> np.ndarray:
  rng = np.random.default_rng((SEED, dim))
  return np.linalg.qr(rng.standard_normal((dim, dim)))[0]


def _subtopics(dim: int, count: int) -> np.ndarray:
  """The centres [count * SUBTOPICS, dim] of the subtopics of topics 0..count-1; topic t's
  from its own seed, so a larger corpus adds topics to a smaller one's."""
  basis, rotation = _basis(_rotation(dim), SPECTRUM), _rotation(dim)
  shared = np.random.default_rng((SEED, dim)).standard_normal(dim) @ rotation
  shared *= SHARED / np.linalg.norm(shared)
  centres = []
  for t in range(count):
    rng = np.random.default_rng((SEED, dim, 1, t))
    topic = shared + SPREADS[0] * rng.standard_normal(dim) @ basis
    centres.append(topic + SPREADS[1] * rng.standard_normal((SUBTOPICS, dim)) @ basis)
  return np.concatenate(centres)


def vectors(num: int, dim: int, stream: int = 0, count: Optional[int] = None) -> np.ndarray:
  """`count` (default `num`) synthetic unit vectors [count, dim] float32 of a corpus of `num`
  rows (whose topics are `topics(num)`): stream 0 is its passages, stream 1 queries from the
  same distribution. Drawn in blocks of BLOCK rows, each from its own seed."""
  count = num if count is None else count
  centres = _subtopics(dim, topics(num))
  offsets = _basis(_rotation(dim), OFFSET_SPECTRUM)
  from rag_jax.index import embed  # pylint: disable=import-outside-toplevel
  # Aligned as a loaded index's vectors are, so that exact searches them in place on the CPU.
  out = embed.aligned_empty((count, dim), np.float32)
  for block, start in enumerate(range(0, count, BLOCK)):
    rng = np.random.default_rng((SEED, dim, 2 + stream, num, block))
    rows = min(BLOCK, count - start)
    x = centres[rng.integers(0, len(centres), rows)] + SPREADS[2] * (
        rng.standard_normal((rows, dim)) @ offsets)
    out[start:start + rows] = x / np.linalg.norm(x, axis=1, keepdims=True)
  return out


def dataset(source: str, num: int, dim: int, queries: int):
  """(indexed [num, dim], queries [Q, dim]) float32: synthetic, or a saved index's vectors
  (`source` its directory; `num` and `dim` are then the index's, less the held-out rows)."""
  if source == "synthetic":
    return vectors(num, dim), vectors(num, dim, stream=1, count=queries)
  from rag_jax.index import embed
  from rag_jax.index import saved
  m = saved.read_manifest(source)
  rows = embed.load_embeddings(pathlib.Path(source) / "embeddings", m["count"], m["dim"],
                               m["dtype"], m["shard_size"])
  return ann.split_queries(rows, queries, np.random.default_rng(SEED))


# ------------------------------------------------------------------------------------------
# Children: one measurement per process.


def _status_mb(field: str) -> float:
  """A memory field of /proc/self/status (VmRSS, VmHWM), in MB."""
  with open("/proc/self/status", encoding="ascii") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) * 1024 / 1e6
  raise OSError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
  """Starts VmHWM (the peak RSS) afresh from the current RSS (Linux >= 4.0)."""
  with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
    f.write("5")


def _bytes_under(directory: pathlib.Path) -> int:
  return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def measure_search(backend: str, source: str, num: int, dim: int, queries: int, repeats: int,
                   ids_out: pathlib.Path) -> dict:
  """Builds `backend` over the vectors and times its search (see the module docstring);
  writes the queries' top-K ids [Q, K] to `ids_out` (.npy)."""
  import jax
  from rag_jax.index import search
  base, query = dataset(source, num, dim, queries)
  jax.numpy.zeros(1).block_until_ready()  # JAX's own start (ScaNN's tuning uses it too)
  before = _status_mb("VmRSS")
  _reset_peak()
  start = time.perf_counter()
  index = search.build(backend, base)
  build_s = time.perf_counter() - start
  rss_build = _status_mb("VmRSS") - before
  result = []
  seconds = common.median_seconds(lambda: result.append(index.search(query, K)), repeats)
  rss_peak = _status_mb("VmHWM") - before
  np.save(ids_out, result[-1][1])
  if backend == "exact":
    index_bytes = sum(int(a.nbytes) for a in index.device_arrays)
  else:  # After the peak is read: serialising makes copies of its own.
    with tempfile.TemporaryDirectory() as tmp:
      index.save(pathlib.Path(tmp) / "backend")
      index_bytes = _bytes_under(pathlib.Path(tmp))
  row = {"source": "synthetic" if source == "synthetic" else "index", "backend": backend,
         "num": len(base), "dim": base.shape[1], "queries": len(query),
         "build_s": round(build_s, 3), "index_mb": index_bytes / 1e6,
         "rss_build_mb": round(rss_build, 1),
         "rss_peak_mb": round(rss_peak, 1),
         "search_s": float(f"{seconds:.6g}"), "qps": round(len(query) / seconds, 1),
         "load": round(os.getloadavg()[0], 2)}
  if backend == "scann":
    row["params"] = {k: index.params()[k] for k in ("num_leaves", "num_leaves_to_search",
                                                     "tuned_recall")}
  return row


def bert_base(like, config=None):
  """A random-weight encoder of DPR's document encoder's shapes (BERT-base, CLS pooling;
  `config`, a `BertConfig`, for others) with `like`'s tokenizer, max_length and batch size."""
  import flax
  import jax
  import jax.numpy as jnp
  from rag_jax.encoder import TextEncoder
  from rag_jax.models import bert
  module = bert.BertEncoder(config or bert.BertConfig())
  params = jax.jit(module.init)(jax.random.PRNGKey(SEED), jnp.zeros((1, 8), jnp.int32))
  return TextEncoder(module, flax.linen.meta.unbox(params["params"]), like.tokenizer,
                     max_length=like.max_length, batch_size=like.batch_size)


def sample_passages(articles: str, count: int, min_words: int, directory: pathlib.Path):
  """A `PassageStore` in `directory` of `count` passages (all, if fewer) drawn at random, in
  corpus order, from those of at least `min_words` words of `articles` (a JSONL file or
  asset:NAME) split as `index build` splits them."""
  from rag_jax.index import corpus
  passages = [p for p in corpus.read_passages(corpus.resolve_source(articles, "jsonl"), "jsonl")
              if len(p["text"].split()) >= min_words]
  if not passages:
    raise ValueError(f"{articles}: no passage of {min_words} words or more")
  picked = np.sort(np.random.default_rng(SEED).choice(
      len(passages), min(count, len(passages)), replace=False))
  corpus.write_passages((passages[i] for i in picked), directory)
  return corpus.PassageStore(directory)


def embed_rate(store, encoder, directory: pathlib.Path) -> dict:
  """`embed.embed_store` over `store`, timed after an untimed pass that compiles every length
  bucket: passages/s, and the mean tokens of a passage's (title, text) pair."""
  from rag_jax.index import embed
  for name in ("warm", "timed"):
    report = embed.embed_store(store, encoder, directory / name, shard_size=len(store),
                               progress=False)
  rows = store.get_many(range(len(store)))
  tokens = float(np.mean([len(t) for t in embed._tokenize_pairs(encoder, rows)]))
  return {"passages": report.passages, "dim": encoder.dim, "seconds": round(report.seconds, 2),
          "passages_per_s": round(report.passages_per_s, 2),
          "tokens_per_passage": round(tokens, 1), "load": round(os.getloadavg()[0], 2)}


def measure_embedding(encoder_spec: str, articles: str, passages: int, min_words: int,
                      base: bool) -> dict:
  """The `--encoder` (or, with `base`, `bert_base` of it) over `passages` sampled passages."""
  from rag_jax import cli
  cli.use_cpu_cores()  # Before JAX starts, as `python -m rag_jax.index build` does.
  from rag_jax.encoder import TextEncoder
  encoder = TextEncoder.from_pretrained(encoder_spec)
  if base:
    encoder = bert_base(encoder)
  # Split over the devices once: `embed_store` would otherwise make (and compile) a new one
  # for each pass.
  encoder = encoder.data_parallel()
  with tempfile.TemporaryDirectory() as tmp:
    store = sample_passages(articles, passages, min_words, pathlib.Path(tmp) / "passages")
    out = embed_rate(store, encoder, pathlib.Path(tmp))
    store.close()
  return {"encoder": f"BERT-base shapes, random weights ({encoder_spec}'s tokenizer)" if base
          else encoder_spec, **out}


# ------------------------------------------------------------------------------------------
# Fits and the prediction.


def fit_linear(xs, ys):
  """(a, b) of y = a + b x, least squares."""
  b, a = np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)
  return float(a), float(b)


def fit_power(xs, ys):
  """(c, p) of y = c x^p, least squares on the logs."""
  p, log_c = np.polyfit(np.log(np.asarray(xs, float)), np.log(np.asarray(ys, float)), 1)
  return float(math.exp(log_c)), float(p)


# (backend, quantity, law). A linear law is a + b x in x = N x D, the floats held or
# scanned: what memory and exact's scan are proportional to. A power law is c N^p, fitted on
# the --dim rows: ScaNN's search (the leaves it must search depend on the data) and its build
# (its training sample and leaves grow with N); both then scale by 768 / --dim, linearly in D
# as their scoring, rescoring and k-means are.
LAWS = (("exact", "s_per_query", "linear"), ("exact", "index_mb", "linear"),
        ("exact", "rss_peak_mb", "linear"), ("scann", "s_per_query", "power"),
        ("scann", "build_s", "power"), ("scann", "index_mb", "linear"),
        ("scann", "rss_peak_mb", "linear"))


def _value(row: dict, quantity: str) -> float:
  return row["search_s"] / row["queries"] if quantity == "s_per_query" else row[quantity]


def fits(rows: list, dim: int) -> dict:
  """"backend/quantity" -> {law, a, b} (linear, over every "synthetic" row) or {law, c, p,
  dim_factor} (power, over the `dim` ones), and for a power law the ratio TARGET_DIM /
  `dim` that a row pair measured at the largest N with both (`measured_dim_ratio`, None
  without one), which the prediction does not use."""
  out = {}
  for backend, quantity, law in LAWS:
    own = [r for r in rows if r["source"] == "synthetic" and r["backend"] == backend]
    if law == "linear":
      a, b = fit_linear([r["num"] * r["dim"] for r in own], [_value(r, quantity) for r in own])
      out[f"{backend}/{quantity}"] = {"law": law, "a": a, "b": b}
      continue
    at_dim = sorted((r for r in own if r["dim"] == dim), key=lambda r: r["num"])
    c, p = fit_power([r["num"] for r in at_dim], [_value(r, quantity) for r in at_dim])
    wide = {r["num"]: r for r in own if r["dim"] == TARGET_DIM}
    both = [r for r in at_dim if r["num"] in wide]
    measured = (_value(wide[both[-1]["num"]], quantity) / _value(both[-1], quantity)
                if both else None)
    out[f"{backend}/{quantity}"] = {"law": law, "c": c, "p": p, "dim_factor": TARGET_DIM / dim,
                                    "measured_dim_ratio": measured,
                                    "measured_at": both[-1]["num"] if both else None}
  return out


def at(entry: dict, num: float, dim: int = TARGET_DIM) -> float:
  """A fitted law at `num` rows of `dim` (a power law: TARGET_DIM) dimensions."""
  if entry["law"] == "linear":
    return entry["a"] + entry["b"] * num * dim
  return entry["c"] * num ** entry["p"] * entry["dim_factor"]


def predict(rows: list, dim: int, fitted: dict, embedding: list) -> dict:
  """The fitted laws at TARGET_NUM x TARGET_DIM, and embedding time at the measured rates.
  Memory "total" adds the float32 vectors a loaded index holds (`saved.Index.embeddings`).

  ScaNN's QPS also comes as "qps_linear": its time at the largest `dim` row grown in
  proportion to N x D. Where it searches the same share of its leaves at every size, its
  scan grows so; the power law's low exponent may come from fixed costs at small N."""
  vectors_gb = TARGET_NUM * TARGET_DIM * 4 / 1e9
  out = {"num": TARGET_NUM, "dim": TARGET_DIM, "vectors_gb": vectors_gb}
  for backend in ("exact", "scann"):
    law = lambda quantity, backend=backend: at(fitted[f"{backend}/{quantity}"], TARGET_NUM)
    out[backend] = {"qps": 1 / law("s_per_query"), "index_gb": law("index_mb") / 1e3,
                    "rss_peak_gb": law("rss_peak_mb") / 1e3,
                    "total_peak_gb": vectors_gb + law("rss_peak_mb") / 1e3}
  out["scann"]["build_s"] = at(fitted["scann/build_s"], TARGET_NUM)
  largest = max((r for r in rows if r["source"] == "synthetic" and r["backend"] == "scann"
                 and r["dim"] == dim), key=lambda r: r["num"])
  out["scann"]["qps_linear"] = 1 / (_value(largest, "s_per_query") * TARGET_NUM * TARGET_DIM
                                    / (largest["num"] * dim))
  out["scann"]["linear_from"] = largest["num"]
  out["scann_vs_exact"] = {k: out["scann"][k] / out["exact"][k]
                           for k in ("qps", "index_gb", "total_peak_gb")}
  out["embedding_hours"] = {e["encoder"]: TARGET_NUM / e["passages_per_s"] / 3600
                            for e in embedding}
  out["ram_gb"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
  return out


# ------------------------------------------------------------------------------------------
# The parent.


def run(args, workdir: pathlib.Path) -> dict:
  """Every measurement, each in a child process, then the fits and the prediction. Each
  search child's ids are left in `workdir` as {kind}-{backend}-{num}x{dim}.npy.

  A row's "source" is its kind: "synthetic" (--sizes, --wide-sizes: what the laws are fitted
  on), "index" (--index's own vectors) or "twin" (synthetic vectors of the index's count)."""
  shapes = ([("synthetic", "synthetic", n, args.dim) for n in args.sizes]
            + [("synthetic", "synthetic", n, args.wide_dim) for n in args.wide_sizes])
  if args.index:
    from rag_jax.index import saved
    m = saved.read_manifest(args.index)
    held = min(args.queries, m["count"] // 2)  # as ann.split_queries holds out
    shapes += [("index", str(args.index), m["count"], m["dim"]),
               ("twin", "synthetic", m["count"] - held, m["dim"])]
  rows = []
  for kind, source, num, dim in shapes:
    pair = {}
    for backend in ("exact", "scann"):
      log(f"{num} x {dim} ({kind}): {backend} ...")
      ids = workdir / f"{kind}-{backend}-{num}x{dim}.npy"
      row = common.run_child(__file__, [
          "--child", "search", "--backend", backend, "--source", source, "--num", str(num),
          "--dim", str(dim), "--queries", str(args.queries), "--repeats", str(args.repeats),
          "--ids-out", str(ids)])
      row["source"] = kind
      pair[backend] = row, np.load(ids)
      rows.append(row)
      log(f"  {json.dumps(row)}")
    (exact, want), (scann, got) = pair["exact"], pair["scann"]
    scann["recall_at_10"] = round(search_recall(want, got), 4)
    # The float32 vectors, held beside either backend (`saved.Index.embeddings`).
    vectors_mb = scann["num"] * scann["dim"] * 4 / 1e6
    scann["vs_exact"] = {k: round(scann[k] / exact[k], 2) for k in ("qps", "index_mb")}
    scann["vs_exact"]["total_peak"] = round((vectors_mb + scann["rss_peak_mb"])
                                            / (vectors_mb + exact["rss_peak_mb"]), 2)
  embedding = []
  for base, count in ((False, args.passages), (True, args.base_passages)):
    if count:
      log(f"embedding {count} passages ({'BERT-base shapes' if base else args.encoder}) ...")
      embedding.append(common.run_child(__file__, [
          "--child", "embed", "--encoder", args.encoder, "--articles", args.articles,
          "--passages", str(count), "--min-words", str(args.min_words),
          *(["--bert-base"] if base else [])]))
      log(f"  {json.dumps(embedding[-1])}")
  fitted = fits(rows, args.dim)
  return {"rows": rows, "embedding": embedding, "fits": fitted,
          "prediction": predict(rows, args.dim, fitted, embedding)}


def search_recall(want: np.ndarray, got: np.ndarray) -> float:
  """recall@K of ids `got` [Q, K] against `want` [Q, K] (`backend.measure_recall`'s rule)."""
  from rag_jax.index import backend
  return backend.recall(want, got)


def _print(report: dict) -> None:
  header = (f"{'vectors':<9} {'N x D':>15}  {'backend':<7} {'build s':>8} {'index MB':>9} "
            f"{'RSS build/peak MB':>18} {'QPS':>9} {'recall@10':>9} {'load':>5}  ScaNN / exact")
  print(header)
  print("-" * len(header))
  for r in report["rows"]:
    ratios = (f"QPS {r['vs_exact']['qps']:.2f}x, index {r['vs_exact']['index_mb']:.2f}x, "
              f"peak RSS with the vectors {r['vs_exact']['total_peak']:.2f}x"
              if r["backend"] == "scann" else "")
    recall = f"{r['recall_at_10']:.4f}" if "recall_at_10" in r else "1 (ref)"
    leaves = (f" ({r['params']['num_leaves_to_search']}/{r['params']['num_leaves']} leaves)"
              if r["backend"] == "scann" and r["params"]["num_leaves"] else "")
    rss = f"{r['rss_build_mb']:,.0f} / {r['rss_peak_mb']:,.0f}"
    print(f"{r['source']:<9} {r['num']:>9,} x {r['dim']:<3}  {r['backend']:<7} "
          f"{r['build_s']:>8.2f} {r['index_mb']:>9,.1f} {rss:>18} {r['qps']:>9,.1f} "
          f"{recall:>9} {r['load']:>5.1f}  {ratios}{leaves}")
  print()
  for e in report["embedding"]:
    print(f"embedding: {e['encoder']}: {e['passages_per_s']:.2f} passages/s ({e['passages']} "
          f"passages, {e['tokens_per_passage']:.0f} tokens each on average, {e['dim']}-d; "
          f"load {e['load']:.1f})")
  print("\nfits (x = N x D for a linear law; a power law in N at --dim, times 768 / --dim):")
  for name, f in report["fits"].items():
    if f["law"] == "linear":
      print(f"  {name:<18} {f['a']:.4g} + {f['b']:.4g} x")
      continue
    measured = (f"; measured 768 / --dim at N = {f['measured_at']:,}: "
                f"{f['measured_dim_ratio']:.2f}" if f["measured_at"] else "")
    print(f"  {name:<18} {f['c']:.4g} N^{f['p']:.3f} x {f['dim_factor']:.2f}{measured}")
  p = report["prediction"]
  print(f"\nprediction for {p['num']:,} x {p['dim']} (this machine: {p['ram_gb']:.1f} GB RAM; "
        f"the float32 vectors: {p['vectors_gb']:.1f} GB):")
  for backend in ("exact", "scann"):
    b = p[backend]
    build = f", build {b['build_s'] / 3600:,.1f} h" if "build_s" in b else ""
    print(f"  {backend:<6} {b['qps']:,.2f} QPS{build}, index {b['index_gb']:.1f} GB, peak RSS "
          f"{b['rss_peak_gb']:.1f} GB beyond the vectors, {b['total_peak_gb']:.1f} GB with them")
  leaves = ", ".join(f"{r['params']['num_leaves_to_search']}/{r['params']['num_leaves']} at "
                     f"{r['num']:,} x {r['dim']}" for r in report["rows"]
                     if r["source"] == "synthetic" and r["backend"] == "scann"
                     and r["params"]["num_leaves"])
  print(f"         {p['scann']['qps_linear']:,.2f} QPS instead if its time grows as N x D from "
        f"N = {p['scann']['linear_from']:,} (leaves searched: {leaves})")
  ratio = p["scann_vs_exact"]
  linear = p["scann"]["qps_linear"] / p["exact"]["qps"]
  print(f"  ScaNN / exact: QPS {ratio['qps']:.1f}x ({linear:.1f}x as N x D), index "
        f"{ratio['index_gb']:.2f}x, peak total {ratio['total_peak_gb']:.2f}x")
  for encoder, hours in p["embedding_hours"].items():
    print(f"  embedding with {encoder}: {hours:,.0f} h ({hours / 24:.1f} days)")


def _sizes(text: str) -> list:
  sizes = [int(s) for s in text.split(",") if s.strip()]
  if any(s < 1 for s in sizes):
    raise ValueError(text)
  return sizes


def make_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", type=_sizes, default=[10_000, 100_000, 1_000_000],
                      help="passages N at --dim, comma-separated (the fit needs 2 or more)")
  parser.add_argument("--dim", type=int, default=384)
  parser.add_argument("--wide-sizes", type=_sizes, default=[10_000, 100_000],
                      help="N at --wide-dim, comma-separated (may be empty)")
  parser.add_argument("--wide-dim", type=int, default=TARGET_DIM)
  parser.add_argument("--queries", type=int, default=1000, help="queries per search call")
  parser.add_argument("--repeats", type=int, default=3, help="timed search calls")
  parser.add_argument("--passages", type=int, default=1024,
                      help="passages embedded by --encoder (0: none)")
  parser.add_argument("--base-passages", type=int, default=256,
                      help="passages embedded at BERT-base shapes (0: none)")
  parser.add_argument("--min-words", type=int, default=90,
                      help="embed only passages of at least this many words")
  parser.add_argument("--encoder", default="asset:all-MiniLM-L6-v2")
  parser.add_argument("--articles", default="asset:wiki-summaries-en",
                      help="JSONL articles whose passages are embedded")
  parser.add_argument("--index", help="a saved index whose vectors to measure as well")
  parser.add_argument("--json", action="store_true", help="one JSON object instead")
  # A child process's measurement (see `run`).
  parser.add_argument("--child", choices=("search", "embed"), help=argparse.SUPPRESS)
  parser.add_argument("--backend", choices=("exact", "scann"), help=argparse.SUPPRESS)
  parser.add_argument("--source", default="synthetic", help=argparse.SUPPRESS)
  parser.add_argument("--num", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--ids-out", help=argparse.SUPPRESS)
  parser.add_argument("--bert-base", action="store_true", help=argparse.SUPPRESS)
  return parser


def main(argv=None):
  parser = make_parser()
  args = parser.parse_args(argv)
  if args.child == "search":
    print(json.dumps(measure_search(args.backend, args.source, args.num, args.dim,
                                    args.queries, args.repeats, pathlib.Path(args.ids_out))))
    return
  if args.child == "embed":
    print(json.dumps(measure_embedding(args.encoder, args.articles, args.passages,
                                       args.min_words, args.bert_base)))
    return
  if len(set(args.sizes)) < 2:
    parser.error("--sizes needs two or more distinct sizes to fit a curve")
  if min(args.dim, args.wide_dim, args.queries, args.repeats) < 1 or min(
      args.passages, args.base_passages, args.min_words) < 0:
    parser.error("--dim, --wide-dim, --queries and --repeats must be positive, "
                 "--passages, --base-passages and --min-words >= 0")
  with tempfile.TemporaryDirectory() as tmp:
    report = run(args, pathlib.Path(tmp))
  if args.json:
    print(json.dumps(report))
  else:
    _print(report)


if __name__ == "__main__":
  main()
