"""Search backends: exact against numpy, sharded against one device, approximate by recall."""

import json
import logging
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import subprocess_env
from rag_jax.index import approx as approx_lib
from rag_jax.index import backend as backend_lib
from rag_jax.index import exact as exact_lib
from rag_jax.index import faiss_hnsw
from rag_jax.index import ondevice
from rag_jax.index import scann_search
from rag_jax.index import search


def exact_reference(queries, embeddings, k):
  """numpy's answer: scores [B, k] (float64) and ids [B, k], best first, lower id on ties."""
  scores = queries.astype(np.float64) @ embeddings.astype(np.float64).T
  ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, ids, axis=1), ids


def clustered(rng, n, dim, clusters=200, spread=2.0):
  """Rows around `clusters` random centres, so that partitioning has structure to find."""
  centres = spread * rng.standard_normal((clusters, dim))
  return (centres[rng.integers(0, clusters, n)] + rng.standard_normal((n, dim))).astype(
      np.float32)


@pytest.fixture(scope="module")
def corpus():
  """A clustered 20,000 x 32 corpus, 200 queries from the same clusters, and ExactSearch."""
  rng = np.random.default_rng(1)
  both = clustered(rng, 20_200, 32)
  embeddings, queries = both[:20_000], both[20_000:]
  return embeddings, queries, exact_lib.ExactSearch(embeddings)


# ------------------------------------------------------------------------------------------
# Exact.


@pytest.mark.parametrize("chunk_size", [7, 64, 1000])  # below N and not dividing it; above N
@pytest.mark.parametrize("k", [1, 10])
def test_exact_matches_argsort(rng, chunk_size, k):
  embeddings = rng.standard_normal((250, 16)).astype(np.float32)
  queries = rng.standard_normal((9, 16)).astype(np.float32)
  scores, ids = exact_lib.ExactSearch(embeddings, chunk_size=chunk_size).search(queries, k)
  want_scores, want_ids = exact_reference(queries, embeddings, k)
  assert scores.shape == ids.shape == (9, k)
  assert scores.dtype == np.float32 and ids.dtype == np.int64
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("gpu_layout", [False, True])
@pytest.mark.parametrize("chunk_size", [7, 400, 5000])
@pytest.mark.parametrize("k", [1, 10])
def test_exact_chunks_and_blocked_select(rng, monkeypatch, gpu_layout, chunk_size, k):
  """Chunks of 7 (raised to keep MAX_CHUNKS), 400 and one chunk, with and without selection
  through maxima of blocks of 4: still numpy's answer, ties to the lower id included (small
  integer vectors make many equal scores, often across blocks and chunks)."""
  monkeypatch.setattr(ondevice, "GPU_LAYOUT", gpu_layout)
  monkeypatch.setattr(ondevice, "SELECT_BLOCK", 4)
  embeddings = rng.integers(-2, 3, (2003, 4)).astype(np.float32)
  queries = rng.integers(-2, 3, (5, 4)).astype(np.float32)
  scores, ids = exact_lib.ExactSearch(embeddings, chunk_size=chunk_size).search(queries, k)
  want_scores, want_ids = exact_reference(queries, embeddings, k)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_array_equal(scores, want_scores)


def test_blocked_select_matches_top_k(rng, monkeypatch):
  """Distinct scores, -inf entries and a last block part-filled, against lax.top_k."""
  monkeypatch.setattr(ondevice, "GPU_LAYOUT", True)
  monkeypatch.setattr(ondevice, "SELECT_BLOCK", 8)
  scores = rng.standard_normal((3, 1001)).astype(np.float32)
  scores[1, :995] = -np.inf
  got = ondevice._blocked_select(jnp.asarray(scores), 5, jax.lax.top_k)
  want = jax.lax.top_k(jnp.asarray(scores), 5)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  np.testing.assert_array_equal(np.asarray(got[0]), np.asarray(want[0]))
  # A tie across blocks, the lower column in the block with the lower maximum: it still wins.
  tied = np.full((1, 128), -1.0, np.float32)
  tied[0, [3, 8, 9]] = 5.0, 9.0, 5.0
  _, ids = ondevice._blocked_select(jnp.asarray(tied), 2, jax.lax.top_k)
  np.testing.assert_array_equal(np.asarray(ids), [[8, 3]])


def test_chunk_rows():
  assert ondevice._chunk_rows(1000, None, gpu=False) == 1000
  assert ondevice._chunk_rows(21_000_000, None, gpu=False) == 328_192  # 64 chunks, rounded up
  assert ondevice._chunk_rows(1_000_000, None, gpu=False) == ondevice.CPU_CHUNK
  assert ondevice._chunk_rows(1_000_000, 100_000, gpu=False) == 100_000
  assert ondevice._chunk_rows(1_000_000, None, gpu=True) == ondevice.CPU_CHUNK
  assert ondevice._chunk_rows(10_000_000, None, gpu=True) == 625_024  # 16 chunks, rounded up
  assert ondevice._chunk_rows(10_000_000, None, gpu=True) % ondevice.SELECT_BLOCK == 0
  assert ondevice._chunk_rows(1000, 300, gpu=True) == 384
  index = exact_lib.ExactSearch(np.ones((1000, 2), np.float32), chunk_size=300)
  assert [len(c) for c in index._index.embeddings] == [300, 300, 300, 100]
  assert index.params()["chunk_size"] == 300


def test_exact_scores_one_chunk_at_a_time(rng):
  """XLA's temporaries stay O(B * chunk), not O(B * N): the chunks' matmuls are serialised."""
  embeddings = rng.standard_normal((64 * 4096, 16)).astype(np.float32)
  queries = jnp.ones((128, 16))
  index = exact_lib.ExactSearch(embeddings, chunk_size=4096)
  compiled = index._index._fn.lower(queries, index._index.embeddings, k=10).compile()
  one_block = 128 * 4096 * 4
  assert compiled.memory_analysis().temp_size_in_bytes < 4 * one_block


def test_exact_takes_jax_arrays(rng):
  embeddings = rng.standard_normal((100, 8)).astype(np.float32)
  queries = rng.standard_normal((3, 8)).astype(np.float32)
  _, ids = exact_lib.ExactSearch(jnp.asarray(embeddings), chunk_size=30).search(
      jnp.asarray(queries), 5)
  np.testing.assert_array_equal(ids, exact_reference(queries, embeddings, 5)[1])


def test_exact_bfloat16_finds_the_clear_winner(rng):
  embeddings = rng.standard_normal((500, 64)).astype(np.float32)
  embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
  rows = rng.choice(500, 20, replace=False)
  queries = embeddings[rows] + 0.01 * rng.standard_normal((20, 64)).astype(np.float32)
  backend = exact_lib.ExactSearch(embeddings, chunk_size=128, dtype=jnp.bfloat16)
  scores, ids = backend.search(queries, 1)
  assert backend.params()["dtype"] == "bfloat16"
  assert scores.dtype == np.float32
  np.testing.assert_array_equal(ids[:, 0], rows)
  np.testing.assert_array_equal(ids, exact_reference(queries, embeddings, 1)[1])


_SHARDED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    import numpy as np
    from jax.sharding import Mesh
    from rag_jax.index import search

    mesh = Mesh(np.array(jax.devices()), ("passages",))
    out = {"devices": len(jax.devices())}
    for name, (path, chunk_size, k) in json.loads(sys.argv[1]).items():
      data = np.load(path)
      for backend in ("exact", "approx"):
        index = search.build(backend, data["embeddings"], chunk_size=chunk_size, mesh=mesh,
                             axis_name="passages")
        scores, ids = index.search(data["queries"], k)
        out[f"{name}/{backend}"] = {"scores": scores.tolist(), "ids": ids.tolist(),
                                    "shards": index.num_shards}
    print(json.dumps(out))
""")


_MULTI_PROCESS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    process, address, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(address, num_processes=2, process_id=process)
    import numpy as np
    from jax.sharding import Mesh
    from rag_jax.index import exact

    data = np.load(path)
    mesh = Mesh(np.array(jax.devices()), ("data",))  # 8 devices, 4 in each process
    out = {"devices": len(jax.devices()), "local": len(jax.local_devices())}
    for chunk_size in (None, 50):
      index = exact.ExactSearch(data["embeddings"], chunk_size=chunk_size, mesh=mesh)
      scores, ids = index.search(data["queries"], 10)
      out[str(chunk_size)] = ids.tolist()
    print(json.dumps(out))
""")


def test_sharded_exact_over_two_processes(rng, tmp_path):
  """A multi-host job in miniature: two processes of 4 CPU devices each (jax.distributed,
  gloo collectives), one 8-device mesh; every process gets numpy's answer."""
  embeddings = rng.integers(-2, 3, (1003, 8)).astype(np.float32)  # ties across shards
  queries = rng.integers(-2, 3, (5, 8)).astype(np.float32)
  path = tmp_path / "data.npz"
  np.savez(path, embeddings=embeddings, queries=queries)
  with socket.socket() as s:
    s.bind(("localhost", 0))
    address = f"localhost:{s.getsockname()[1]}"
  env = subprocess_env()
  procs = [subprocess.Popen([sys.executable, "-c", _MULTI_PROCESS_SCRIPT, str(i), address,
                             str(path)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  want = exact_reference(queries, embeddings, 10)[1].tolist()
  for proc in procs:
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    out = json.loads(stdout.strip().splitlines()[-1])
    assert (out["devices"], out["local"]) == (8, 4)
    assert out["None"] == want and out["50"] == want


def test_sharded_exact_equals_one_device(rng, tmp_path):
  # 8 CPU devices must be asked for before jax starts, so this runs in a fresh interpreter.
  cases = {  # name: (N, D, chunk_size, k)
      "uneven": (1003, 16, 50, 10),  # N not a multiple of 8; chunks do not divide a shard
      "tiny": (20, 8, 2, 10),        # shards of 3 rows < k; the last shard is all padding
      "top1": (1003, 16, 65536, 1),
  }
  data, args = {}, {}
  for name, (n, dim, chunk_size, k) in cases.items():
    data[name] = (rng.standard_normal((n, dim)).astype(np.float32),
                  rng.standard_normal((5, dim)).astype(np.float32))
    path = tmp_path / f"{name}.npz"
    np.savez(path, embeddings=data[name][0], queries=data[name][1])
    args[name] = (str(path), chunk_size, k)
  env = subprocess_env()
  proc = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, json.dumps(args)], env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out["devices"] == 8

  for name, (_, _, chunk_size, k) in cases.items():
    embeddings, queries = data[name]
    want_scores, want_ids = exact_lib.ExactSearch(embeddings, chunk_size=chunk_size).search(
        queries, k)
    np.testing.assert_array_equal(want_ids, exact_reference(queries, embeddings, k)[1])
    for backend in ("exact", "approx"):  # approx_max_k is exact on CPU
      got = out[f"{name}/{backend}"]
      assert got["shards"] == 8
      np.testing.assert_array_equal(np.array(got["ids"]), want_ids, err_msg=f"{name}/{backend}")
      np.testing.assert_allclose(np.array(got["scores"]), want_scores, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Recall.


def test_measure_recall_counts_shared_ids():
  class Fixed:
    def __init__(self, ids):
      self.ids = np.array(ids)

    def search(self, queries, k):
      return np.zeros(self.ids.shape, np.float32), self.ids

  reference = Fixed([[0, 1, 2, 3], [4, 5, 6, 7]])
  backend = Fixed([[3, 2, 9, -1], [4, 5, 6, 7]])  # order ignored, -1 never matches
  assert backend_lib.measure_recall(backend, reference, np.zeros((2, 1)),
                                    4) == pytest.approx(0.75)


def test_approx_recall(rng):
  embeddings = rng.standard_normal((3000, 32)).astype(np.float32)
  queries = rng.standard_normal((50, 32)).astype(np.float32)
  approx = approx_lib.ApproxSearch(embeddings, recall_target=0.95, chunk_size=1024)
  approx.measured_recall = backend_lib.measure_recall(
      approx, exact_lib.ExactSearch(embeddings), queries, 10)
  print(f"approx recall@10: {approx.measured_recall:.4f}")
  assert approx.measured_recall >= 0.9
  assert json.loads(json.dumps(approx.params()))["measured_recall"] == approx.measured_recall


@pytest.mark.parametrize("params", [
    {},                                    # N = 20,000: a tree of 226 leaves, tuned to 0.95
    {"num_leaves": 141, "num_leaves_to_search": 15},  # a tree searched as told
    {"num_leaves": 0},                                # hashing + rescoring, no tree
])
def test_scann_recall(corpus, params):
  embeddings, queries, exact = corpus
  scann = scann_search.ScannSearch(embeddings, **params)
  resolved = scann.params()
  assert not resolved["brute_force"] and resolved["reorder"] == 100
  assert resolved["num_leaves"] == params.get("num_leaves", 226)
  recall = backend_lib.measure_recall(scann, exact, queries, 10)
  print(f"scann {params or 'defaults'} recall@10: {recall:.4f}")
  assert recall >= 0.9
  # Rescored scores are the exact inner products of the returned rows.
  scores, ids = scann.search(queries, 10)
  np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", queries, embeddings[ids]),
                             rtol=1e-4, atol=1e-4)


def test_scann_save_load_round_trip(corpus, tmp_path):
  embeddings, queries, _ = corpus
  scann = scann_search.ScannSearch(embeddings, num_leaves=141, num_leaves_to_search=15)
  scann.save(tmp_path / "index")
  loaded = scann_search.ScannSearch.load(tmp_path / "index", embeddings)
  assert loaded.params() == scann.params()
  for k in (1, 10):
    want, got = scann.search(queries, k), loaded.search(queries, k)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])

  with pytest.raises(ValueError, match="other embeddings"):
    scann_search.ScannSearch.load(tmp_path / "index", embeddings[::-1])
  with pytest.raises(ValueError, match="not an empty directory"):
    scann.save(tmp_path / "index")
  with pytest.raises(ValueError, match="not a saved ScaNN index"):
    scann_search.ScannSearch.load(tmp_path, embeddings)


def test_scann_tunes_leaves_to_a_recall_target(rng, caplog):
  # Unclustered data, so that the leaves searched matter (clustered data needs one or two).
  both = rng.standard_normal((20_200, 16)).astype(np.float32)
  embeddings, queries = both[:20_000], both[20_000:]
  exact = exact_lib.ExactSearch(embeddings)
  rows = np.sort(np.random.default_rng(0).choice(len(embeddings), 1000, replace=False))
  want = scann_search._drop_self(exact.search(embeddings[rows], 11)[1], rows, 10)

  def tuning_recall(scann):  # tune's protocol: 100 rescored rows + the query's own
    ids, _ = scann._searcher.search_batched_parallel(
        embeddings[rows], final_num_neighbors=11, pre_reorder_num_neighbors=101,
        leaves_to_search=scann.num_leaves_to_search)
    got = scann_search._drop_self(np.asarray(ids).astype(np.int64), rows, 10)
    per_query = (want[:, :, None] == got[:, None, :]).any(-1).mean(-1)
    # The mean, and the one-sided 95% lower confidence bound that tuning holds to the target.
    return per_query.mean(), per_query.mean() - 1.645 * per_query.std(ddof=1) / np.sqrt(1000)

  scann = scann_search.ScannSearch(embeddings, num_leaves=200, recall_target=0.9)
  params = scann.params()
  leaves = params["num_leaves_to_search"]
  assert 1 < leaves < 200 and params["recall_target"] == 0.9
  mean, bound = tuning_recall(scann)
  assert mean == pytest.approx(params["tuned_recall"], abs=1e-4)
  assert bound >= 0.9 and params["tuned_recall"] > 0.9
  scann.num_leaves_to_search = leaves - 1  # the fewest: one leaf fewer misses the target
  assert tuning_recall(scann)[1] < 0.9
  scann.num_leaves_to_search = leaves
  # Held-out queries get about the recall it was tuned to.
  recall = backend_lib.measure_recall(scann, exact, queries, 10)
  print(f"scann tuned to 0.9: {leaves} of 200 leaves, tuned recall "
        f"{params['tuned_recall']:.4f}, held-out recall@10 {recall:.4f}")
  assert recall >= 0.88
  # Rebuilding from params() keeps the tuned count instead of tuning again.
  assert scann_search.ScannSearch(embeddings, **params).params() == params

  # Out of reach (hashing + 100 rescored rows stop short of it): every leaf, and a warning.
  with caplog.at_level(logging.WARNING):
    assert scann.tune(embeddings, 0.999) < 0.999
  assert scann.num_leaves_to_search == 200 and "not reached" in caplog.text
  with pytest.raises(ValueError, match="recall_target must be in"):
    scann.tune(embeddings, 1.5)


@pytest.mark.parametrize("spread, above_floor", [(4.0, True), (0.0, False)])
def test_scann_threshold_follows_the_kth_neighbour_cosine(rng, spread, above_floor):
  # Tight clusters put the 10th neighbour at a high cosine (about 0.95); plain noise in 128
  # dimensions at a low one (about 0.25), where ScaNN's 0.2 (of the norm) is the floor.
  embeddings = 3.0 * clustered(rng, 6000, 128, clusters=100, spread=spread)
  scann = scann_search.ScannSearch(embeddings, num_leaves=50, num_leaves_to_search=5)
  rows = np.sort(np.random.default_rng(0).choice(len(embeddings), 1000, replace=False))
  scores = embeddings[rows].astype(np.float64) @ embeddings.astype(np.float64).T
  scores[np.arange(len(rows)), rows] = -np.inf  # each row's own id is not its neighbour
  kth = embeddings[np.argsort(-scores, axis=1, kind="stable")[:, 9]].astype(np.float64)
  norms = np.linalg.norm(embeddings[rows].astype(np.float64), axis=1)
  cosine = np.median(np.sum(embeddings[rows] * kth, axis=1) / norms / np.linalg.norm(kth, axis=1))
  relative = max(0.2, 0.55 * cosine)
  assert (relative > 0.2) == above_floor
  np.testing.assert_allclose(scann.params()["anisotropic_quantization_threshold"],
                             relative * np.median(norms), rtol=1e-4)
  # Given, it is used as it is; with brute force there is no hashing to weigh.
  assert scann_search.ScannSearch(embeddings, num_leaves=50, num_leaves_to_search=5,
                                  anisotropic_quantization_threshold=0.7).params()[
                                "anisotropic_quantization_threshold"] == 0.7
  assert scann_search.ScannSearch(embeddings, brute_force=True).params()[
      "anisotropic_quantization_threshold"] is None


def test_scann_finds_the_tuning_neighbours_once(rng, monkeypatch):
  embeddings = clustered(rng, 6000, 16, clusters=50)
  built = []

  def counting_exact(*args, **kwargs):
    built.append(args[0].shape)
    return exact_search(*args, **kwargs)

  exact_search = exact_lib.ExactSearch
  monkeypatch.setattr(exact_lib, "ExactSearch", counting_exact)
  scann = scann_search.ScannSearch(embeddings, num_leaves=60, recall_target=0.9)
  scann.tune(embeddings, 0.95)
  # The threshold and both tunings share one exact search of the tuning rows.
  assert built == [(6000, 16)]
  with pytest.raises(ValueError, match="embeddings this searcher was built from"):
    scann.tune(embeddings[::-1], 0.9)


def test_drop_self_removes_the_query_row_or_the_last_id():
  ids = np.array([[5, 7, 9], [1, 2, 3], [4, 8, 0]])
  np.testing.assert_array_equal(scann_search._drop_self(ids, np.array([7, 6, 0]), 2),
                                [[5, 9], [1, 2], [4, 8]])


def test_scann_small_corpus_is_brute_force(rng):
  embeddings = rng.standard_normal((500, 16)).astype(np.float32)
  queries = rng.standard_normal((10, 16)).astype(np.float32)
  scann = scann_search.ScannSearch(embeddings)
  assert scann.params()["brute_force"] and scann.params()["num_leaves"] == 0
  scores, ids = scann.search(queries, 10)
  want_scores, want_ids = exact_reference(queries, embeddings, 10)
  np.testing.assert_array_equal(ids, want_ids)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_scann_unfilled_slots_are_minus_one(rng):
  # Two leaves of 100 searched (~60 rows) and k = 200: ScaNN reaches fewer rows than asked
  # for. (With one leaf, one CI run out of many found no row at all for a query, on the same
  # data: ScaNN's tree varies from run to run, and a query can be routed to an empty leaf.)
  embeddings = clustered(rng, 3000, 16, clusters=50)
  scann = scann_search.ScannSearch(embeddings, k=200, num_leaves=100,
                                   num_leaves_to_search=2, reorder=200)
  scores, ids = scann.search(embeddings[:5], 200)
  missing = ids == -1
  assert missing.any() and not missing.all(axis=1).any()
  np.testing.assert_array_equal(np.isneginf(scores), missing)
  assert (np.diff(missing.astype(int), axis=1) >= 0).all()  # the unfilled slots are last
  for row_scores, row_missing in zip(scores, missing):
    assert (np.diff(row_scores[~row_missing]) <= 0).all()  # found rows come first, best first


# ------------------------------------------------------------------------------------------
# Interface.


def test_k_larger_than_n_is_an_error(rng):
  embeddings = rng.standard_normal((12, 4)).astype(np.float32)
  queries = rng.standard_normal((2, 4)).astype(np.float32)
  for backend in (exact_lib.ExactSearch(embeddings), approx_lib.ApproxSearch(embeddings),
                  scann_search.ScannSearch(embeddings)):
    with pytest.raises(ValueError, match="k=13 exceeds the 12 indexed embeddings"):
      backend.search(queries, 13)
    assert backend.search(queries, 12)[1].shape == (2, 12)


def test_bad_arguments(rng):
  embeddings = rng.standard_normal((12, 4)).astype(np.float32)
  exact = exact_lib.ExactSearch(embeddings)
  with pytest.raises(ValueError, match=r"queries must be \[B, 4\]"):
    exact.search(np.zeros((2, 5), np.float32), 1)
  with pytest.raises(ValueError, match="k must be a positive integer"):
    exact.search(np.zeros((2, 4), np.float32), 0)
  with pytest.raises(ValueError, match="dtype must be one of"):
    exact_lib.ExactSearch(embeddings, dtype=np.float16)
  with pytest.raises(ValueError, match=r"non-empty \[N, D\]"):
    exact_lib.ExactSearch(np.zeros((0, 4), np.float32))


def test_build_round_trips_params(rng):
  embeddings = rng.standard_normal((40, 4)).astype(np.float32)
  queries = rng.standard_normal((3, 4)).astype(np.float32)
  assert set(search.BACKENDS) == {"exact", "approx", "scann", "faiss_hnsw"}
  for name in ("exact", "approx", "scann"):
    first = search.build(name, embeddings, chunk_size=16) if name != "scann" else \
        search.build(name, embeddings)
    again = search.build(name, embeddings, **json.loads(json.dumps(first.params())))
    assert again.params() == first.params()
    np.testing.assert_array_equal(again.search(queries, 5)[1], first.search(queries, 5)[1])
  with pytest.raises(ValueError, match="unknown search backend 'hnsw'"):
    search.build("hnsw", embeddings)


def test_faiss_missing_is_a_clear_import_error(rng, monkeypatch):
  monkeypatch.setitem(sys.modules, "faiss", None)  # as if the faiss extra were not installed
  with pytest.raises(ImportError, match=r"pip install 'rag_jax\[faiss\]'") as info:
    search.build("faiss_hnsw", rng.standard_normal((10, 4)).astype(np.float32))
  assert isinstance(info.value, backend_lib.MissingDependencyError)
  assert "\n" not in str(info.value)


def test_faiss_hnsw_recall(corpus):  # faiss-cpu is in the test extra
  embeddings, queries, exact = corpus
  hnsw = faiss_hnsw.FaissHnswSearch(embeddings)
  assert backend_lib.measure_recall(hnsw, exact, queries, 10) >= 0.9
