"""How fast ScaNN can search at recall@10 >= 0.95, over a grid of its settings, against
FAISS HNSW: is the issue's goal reachable where rag_jax's default misses it?

    python benchmarks/scann_frontier.py [--datasets wiki] [--queries 1000] [--repeats 9]
                                        [--target 0.95] [--json] [--quick]

`benchmarks/ann.py` measures rag_jax's default ScaNN configuration. This measures ScaNN used
directly (`scann_ops_pybind`), on the same datasets, query split and protocol (ann.py's
loaders, `split_queries` and `time_rounds`), over a grid of

  leaves          round(f sqrt(N)), f in LEAVES_PER_SQRT_N (1.6 is rag_jax's default)
  dims per block  DIMS_PER_BLOCK: the asymmetric hashing's block width; a wider block means
                  fewer code lookups per row scored (cheaper to build and to search) and a
                  coarser score
  rescoring       REORDER_DTYPES: the candidates rescored in float32 (as rag_jax does) or in
                  ScaNN's int8 (whose scores are then int8 approximations)
  reorder         REORDER: candidates rescored per query (a search-time setting)

Everything else (hashing threshold, spherical tree, training sample, k-means rounds) is what
rag_jax's default resolved for the dataset. Each build and reorder is searched with the
fewest leaves whose recall@10 on the benchmark's own held-out queries reaches the target (a
bisection over the leaf count): an oracle, kinder to ScaNN than tuning on index rows as
rag_jax does. A grid build's time is ScaNN's build alone; the default's also holds choosing
the threshold and tuning the leaves (an exact search of 1,000 rows and a bisection), so the
grid's build times are lower bounds for a configuration that has to choose them.

The floor: every build searched with 1 leaf and only k candidates rescored. Whatever its
recall, no setting of that build searches faster, so the fastest floor bounds what the
grid's builds could reach with any leaves or reorder.

Timed together, in `--repeats` interleaved rounds (`ann.time_rounds`, median kept and the
spread over rounds reported): FAISS HNSW32 (efConstruction 200) at its fastest ef_search in
ann.py's grid that reaches the target, rag_jax's default (whatever its recall), every grid
setting that reaches the target, and every floor. The summary gives each one's QPS and build
time against FAISS's: the issue's goal is >= 2x the QPS and >= 5x faster to build, in the
same run.

Output: a table on stdout (progress on stderr), or with --json one JSON object per setting
and one summary per dataset. `--quick`: 3 rounds, and GloVe cut to 50,000 rows.
"""
# pylint: disable=protected-access,import-outside-toplevel

import argparse
import json
import math
import time

import numpy as np

import ann
from rag_jax.index import backend
from rag_jax.index import exact
from rag_jax.index import scann_search
from rag_jax.index import search

LEAVES_PER_SQRT_N = (0.4, 0.8, 1.6)
DIMS_PER_BLOCK = (2, 4, 8)
REORDER_DTYPES = ("float32", "int8")
REORDER = (100, 200, 400)


class Setting:
  """A ScaNN searcher at fixed search-time settings, searched as rag_jax's ScannSearch is."""

  def __init__(self, searcher, leaves: int, reorder: int):
    self.searcher, self.leaves, self.reorder = searcher, leaves, reorder

  def search(self, queries, k):
    ids, scores = self.searcher.search_batched_parallel(
        queries, final_num_neighbors=k, pre_reorder_num_neighbors=self.reorder,
        leaves_to_search=self.leaves, batch_size=scann_search._chunk(len(queries)))
    return scann_search._scann_result(ids, scores)


def build_grid(base: np.ndarray, default: dict):
  """Yields (label, searcher, build seconds, num_leaves) for every build of the grid, with
  the default's other parameters (`default`: `ScannSearch.params()`)."""
  import scann
  from scann.scann_ops.py.scann_builder import ReorderType
  for factor in LEAVES_PER_SQRT_N:
    leaves = max(1, round(factor * math.sqrt(len(base))))
    for dims in DIMS_PER_BLOCK:
      for dtype in REORDER_DTYPES:
        start = time.perf_counter()
        searcher = (
            scann.scann_ops_pybind.builder(base, ann.K, "dot_product")
            .tree(num_leaves=leaves, num_leaves_to_search=1,
                  training_sample_size=default["training_sample_size"],
                  training_iterations=default["training_iterations"],
                  spherical=default["spherical"])
            .score_ah(dims, anisotropic_quantization_threshold=default[
                "anisotropic_quantization_threshold"],
                      training_sample_size=default["training_sample_size"])
            .reorder(max(REORDER), quantize=ReorderType[dtype.upper()])
            .build())
        yield (f"leaves {leaves} dims/block {dims} {dtype} rescoring", searcher,
               time.perf_counter() - start, leaves)


def fewest_leaves(recall_at, num_leaves: int, target: float):
  """(leaves, recall): the fewest leaves in [1, num_leaves] whose recall_at(leaves) >=
  target, found by bisection (recall taken to grow with the leaves searched; where it does
  not, the count found still reaches the target), or None if num_leaves misses it."""
  measured = {num_leaves: recall_at(num_leaves)}
  if measured[num_leaves] < target:
    return None
  low, high = 1, num_leaves
  while low < high:  # Invariant: `high` reaches the target.
    mid = (low + high) // 2
    measured[mid] = recall_at(mid)
    if measured[mid] >= target:
      high = mid
    else:
      low = mid + 1
  return high, measured[high]


def bench_dataset(name: str, vectors: np.ndarray, args) -> tuple:
  """(one row per timed setting, the dataset's summary)."""
  base, queries = ann.split_queries(vectors, args.queries, np.random.default_rng(ann.SEED))
  ann.log(f"{name}: {base.shape[0]} x {base.shape[1]} indexed, {len(queries)} queries")
  truth = ann.Truth(exact.ExactSearch(base).search(queries, ann.K))

  def recall(index) -> float:
    return backend.measure_recall(index, truth, queries, ann.K)

  rows = []  # (kind, label, index, search-time attributes, build seconds, recall)
  start = time.perf_counter()
  hnsw = search.build("faiss_hnsw", base, m=32, ef_construction=200)
  hnsw_build = time.perf_counter() - start
  for ef in ann.HNSW_EF_SEARCH:
    hnsw.ef_search = ef
    hnsw_recall = recall(hnsw)
    if hnsw_recall >= args.target:
      rows.append(("faiss_hnsw", f"M32 efC200 ef{ef}", hnsw, {"ef_search": ef}, hnsw_build,
                   hnsw_recall))
      break
  start = time.perf_counter()
  default = search.build("scann", base)
  rows.append(("rag_jax default", f"leaves {default.num_leaves} "
               f"({default.num_leaves_to_search} searched) dims/block "
               f"{default.dimensions_per_block} float32 rescoring reorder {default.reorder}",
               default, {}, time.perf_counter() - start, recall(default)))
  ann.log(f"{name}: faiss_hnsw and the rag_jax default built; the grid ...")

  for label, searcher, build_s, num_leaves in build_grid(base, default.params()):
    floor = Setting(searcher, 1, ann.K)
    rows.append(("floor", f"{label}: 1 leaf, reorder {ann.K}", floor, {}, build_s,
                 recall(floor)))
    for reorder in REORDER:
      probe = Setting(searcher, num_leaves, reorder)

      def recall_at(leaves, probe=probe):
        probe.leaves = leaves
        return recall(probe)

      found = fewest_leaves(recall_at, num_leaves, args.target)
      if found:
        leaves, found_recall = found
        rows.append(("grid", f"{label} ({leaves} searched) reorder {reorder}",
                     Setting(searcher, leaves, reorder), {}, build_s, found_recall))
    ann.log(f"{name}: {label}: build {build_s:.2f} s")

  ann.log(f"{name}: timing {len(rows)} settings, {args.repeats} interleaved rounds ...")
  seconds = ann.time_rounds([(r[2], r[3]) for r in rows], queries, len(queries), args.repeats)
  out = [{"dataset": name, "num": len(base), "dim": base.shape[1], "kind": kind,
          "setting": label, "build_s": round(build_s, 3),
          "qps": round(len(queries) / float(np.median(s)), 1),
          "qps_min": round(len(queries) / max(s), 1), "qps_max": round(len(queries) / min(s), 1),
          "recall_at_10": round(rec, 4)}
         for (kind, label, _, _, build_s, rec), s in zip(rows, seconds)]
  return out, summary(name, out, args.target)


def summary(name: str, rows: list, target: float) -> dict:
  """The fastest row of each kind, with its QPS and build speed as ratios to FAISS HNSW's."""
  def fastest(kind):
    ok = [r for r in rows if r["kind"] == kind]
    return max(ok, key=lambda r: r["qps"]) if ok else None

  faiss = fastest("faiss_hnsw")
  out = {"summary": name, "target": target, "faiss_hnsw": faiss}
  for kind in ("rag_jax default", "grid", "floor"):
    best = fastest(kind)
    if best and faiss:
      best = dict(best, qps_ratio=round(best["qps"] / faiss["qps"], 2),
                  build_ratio=round(faiss["build_s"] / best["build_s"], 2))
    out[kind] = best
  return out


def _print(rows: list, summaries: list) -> None:
  header = (f"{'dataset':<7} {'kind':<15} {'setting':<72} {'build s':>7} {'QPS':>9} "
            f"{'(min-max)':>17} {'recall':>6}")
  print(header)
  print("-" * len(header))
  for r in sorted(rows, key=lambda r: (r["dataset"], r["kind"] == "floor", -r["qps"])):
    spread = f"({r['qps_min']:,.0f}-{r['qps_max']:,.0f})"
    print(f"{r['dataset']:<7} {r['kind']:<15} {r['setting']:<72} {r['build_s']:>7.2f} "
          f"{r['qps']:>9,.0f} {spread:>17} {r['recall_at_10']:>6.4f}")
  for s in summaries:
    print(f"\n{s['summary']}: against FAISS HNSW's fastest setting with recall@10 >= "
          f"{s['target']} (goal: >= {ann.GOAL_QPS_RATIO:g}x QPS, >= "
          f"{ann.GOAL_BUILD_RATIO:g}x faster build)")
    for kind, what in (("faiss_hnsw", "faiss_hnsw"), ("rag_jax default", "rag_jax default"),
                       ("grid", "fastest grid setting"), ("floor", "fastest floor")):
      r = s[kind]
      if r is None:
        print(f"  {what}: none reaches the target")
        continue
      short = " (below the target)" if kind != "floor" and r["recall_at_10"] < s["target"] else ""
      ratios = (f": {r['qps_ratio']:.2f}x QPS, build {r['build_ratio']:.2f}x faster"
                if "qps_ratio" in r else "")
      print(f"  {what}: {r['setting']}: {r['qps']:,.0f} QPS at {r['recall_at_10']:.4f}{short}, "
            f"build {r['build_s']:.2f} s{ratios}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--datasets", default="wiki",
                      help=f"comma-separated, of {', '.join(ann.DATASETS)}")
  parser.add_argument("--queries", type=int, default=1000, help="held-out noisy queries")
  parser.add_argument("--repeats", type=int, default=9, help="timed rounds")
  parser.add_argument("--target", type=float, default=ann.GOAL_RECALL, help="recall@10")
  parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
  parser.add_argument("--quick", action="store_true",
                      help=f"3 rounds, and GloVe cut to {ann.QUICK_GLOVE_ROWS:,} rows")
  args = parser.parse_args()
  names = ann.dataset_names(parser, args.datasets)
  if args.queries < 1 or args.repeats < 1 or not 0.0 < args.target <= 1.0:
    parser.error("--queries and --repeats must be positive, --target in (0, 1]")
  if args.quick:
    args.repeats = min(args.repeats, 3)
  rows, summaries = [], []
  for name in names:
    dataset_rows, dataset_summary = bench_dataset(name, ann.DATASETS[name](args.quick), args)
    rows += dataset_rows
    summaries.append(dataset_summary)
  if args.json:
    for line in rows + summaries:
      print(json.dumps(line))
  else:
    _print(rows, summaries)


if __name__ == "__main__":
  main()
