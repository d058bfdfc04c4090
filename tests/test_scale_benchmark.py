"""benchmarks/scale.py on tiny sizes: the report's numbers against brute force and arithmetic,
the synthetic vectors, and the fitted laws."""

import contextlib
import io
import json
import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import scale  # pylint: disable=g-import-not-at-top,wrong-import-position
from rag_jax.models import bert  # pylint: disable=g-import-not-at-top,wrong-import-position
from rag_jax.weights import tiny  # pylint: disable=g-import-not-at-top,wrong-import-position

WORDS = "river mountain king queen war peace music science city sea".split()


def _in_process(script, args, extra_env=None):
  """common.run_child, run in this process: one JAX start for the whole test."""
  del script, extra_env
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    scale.main(args)
  return json.loads(out.getvalue().strip().splitlines()[-1])


def _top10(base, queries):
  """Brute force: each query's 10 best rows by inner product, as sets."""
  scores = queries.astype(np.float64) @ base.astype(np.float64).T
  return [set(row) for row in np.argsort(-scores, axis=1)[:, :10]]


@pytest.fixture(name="report", scope="module")
def _report(tmp_path_factory):
  """One run of the benchmark (its search children run in this process), and its ids."""
  tmp = tmp_path_factory.mktemp("scale")
  encoder = tiny.write(tmp / "models", WORDS) / "question_encoder"
  articles = tmp / "a.jsonl"
  articles.write_text("".join(
      json.dumps({"title": f"T{i}", "text": " ".join(WORDS[(i + j) % 10] for j in range(n))})
      + "\n" for i, n in enumerate([3, 150, 7, 60, 12, 230, 5, 30, 90, 40])))
  args = scale.make_parser().parse_args([
      "--sizes", "2000,6000", "--dim", "48", "--wide-sizes", "2000", "--queries", "40",
      "--repeats", "1", "--passages", "12", "--base-passages", "0", "--min-words", "50",
      "--encoder", str(encoder), "--articles", str(articles)])
  work = tmp / "work"
  work.mkdir()
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(scale.common, "run_child", _in_process)
    return scale.run(args, work), work


@pytest.mark.slow
def test_exact_is_brute_force_and_scann_recall_is_against_it(report):
  report, work = report
  for num, dim in ((2000, 48), (6000, 48), (2000, 768)):
    base, queries = scale.vectors(num, dim), scale.vectors(num, dim, stream=1, count=40)
    want = _top10(base, queries)
    exact = np.load(work / f"synthetic-exact-{num}x{dim}.npy")
    assert [set(row) for row in exact] == want
    got = np.load(work / f"synthetic-scann-{num}x{dim}.npy")
    recall = np.mean([len(w & set(g)) / 10 for w, g in zip(want, got)])
    row = next(r for r in report["rows"]
               if r["backend"] == "scann" and (r["num"], r["dim"]) == (num, dim))
    assert row["recall_at_10"] == round(recall, 4)
  tree = next(r for r in report["rows"] if r["backend"] == "scann" and r["num"] == 6000)
  assert tree["params"]["num_leaves"] > 0 and tree["recall_at_10"] < 1.0  # approximate


def test_memory_ratios_and_prediction_arithmetic(report):
  report, _ = report
  rows = {(r["backend"], r["num"], r["dim"]): r for r in report["rows"]}
  for (backend, num, dim), r in rows.items():
    floats = num * dim * 4 / 1e6  # N x D float32, in MB
    if backend == "exact":
      assert r["index_mb"] == pytest.approx(floats)
    else:  # ScaNN keeps a float32 copy of the rows for rescoring, and more
      assert r["index_mb"] > floats
      exact = rows[("exact", num, dim)]
      vectors = num * dim * 4 / 1e6
      assert r["vs_exact"] == {
          "qps": round(r["qps"] / exact["qps"], 2),
          "index_mb": round(r["index_mb"] / exact["index_mb"], 2),
          "total_peak": round((vectors + r["rss_peak_mb"]) / (vectors + exact["rss_peak_mb"]),
                              2)}
    assert r["qps"] == pytest.approx(r["queries"] / r["search_s"], rel=1e-3)
    assert r["rss_peak_mb"] >= r["rss_build_mb"] - 1

  fits, p = report["fits"], report["prediction"]
  # exact's index is 4 bytes a float, over both dims.
  assert fits["exact/index_mb"]["b"] == pytest.approx(4 / 1e6)
  assert abs(fits["exact/index_mb"]["a"]) < 1e-6
  assert p["exact"]["index_gb"] == pytest.approx(scale.TARGET_NUM * 768 * 4 / 1e9)
  assert p["vectors_gb"] == pytest.approx(p["exact"]["index_gb"])
  scann_time = fits["scann/s_per_query"]
  assert scann_time["dim_factor"] == 768 / 48 and scann_time["measured_at"] == 2000
  assert p["scann"]["qps"] == pytest.approx(
      1 / (scann_time["c"] * scale.TARGET_NUM ** scann_time["p"] * 768 / 48))
  largest = rows[("scann", 6000, 48)]
  assert p["scann"]["linear_from"] == 6000 and p["scann"]["qps_linear"] == pytest.approx(
      largest["queries"] / largest["search_s"] * 6000 * 48 / (scale.TARGET_NUM * 768))
  for key in ("qps", "index_gb", "total_peak_gb"):
    assert p["scann_vs_exact"][key] == pytest.approx(p["scann"][key] / p["exact"][key])

  (embedding,) = report["embedding"]
  # 13 passages in all (230 words: 77 + 77 + 76), 7 of them of 50 words or more.
  assert embedding["passages"] == 7 and embedding["dim"] == 32
  assert embedding["passages_per_s"] > 0 and embedding["tokens_per_passage"] > 3
  assert p["embedding_hours"][embedding["encoder"]] == pytest.approx(
      scale.TARGET_NUM / embedding["passages_per_s"] / 3600)


def test_table(report, capsys):
  report, _ = report
  scale._print(report)  # pylint: disable=protected-access
  out = capsys.readouterr().out
  assert "synthetic     6,000 x 48   scann" in out and "(ref)" in out
  assert "embedding: " in out and "(7 passages, " in out
  assert "prediction for 21,015,300 x 768" in out and "ScaNN / exact: QPS " in out
  assert "scann/s_per_query" in out and "measured 768 / --dim at N = 2,000" in out
  assert "QPS instead if its time grows as N x D from N = 6,000 (leaves searched: " in out


def test_fits_recover_the_laws_they_fit():
  sizes = [10_000, 100_000, 1_000_000]
  a, b = scale.fit_linear(sizes, [0.002 + 3e-8 * n for n in sizes])
  assert (a, b) == (pytest.approx(0.002), pytest.approx(3e-8))
  c, p = scale.fit_power(sizes, [4e-6 * n ** 0.45 for n in sizes])
  assert (c, p) == (pytest.approx(4e-6), pytest.approx(0.45))
  # Rows that follow known laws: exact's time and all memory in N x D, ScaNN's time and build
  # as powers of N (doubled at 768-d, where the power laws are scaled by 768 / 384 anyway).
  rows = [{"source": source, "backend": backend, "num": n, "dim": dim, "queries": 100,
           "search_s": 100 * (2e-4 + 1e-11 * n * dim if backend == "exact"
                              else 1e-6 * n ** 0.5 * dim / 384),
           "index_mb": n * dim * 4e-6, "rss_peak_mb": 10 + n * dim * 8e-6,
           "build_s": 3e-4 * n ** 0.9 * dim / 384}
          for backend in ("exact", "scann")
          for source, n, dim in [("synthetic", n, 384) for n in sizes]
          + [("synthetic", 100_000, 768), ("index", 11_000, 384), ("twin", 11_000, 384)]]
  for row in rows:  # Off-law rows that the fits must leave out.
    if row["source"] != "synthetic":
      row.update(search_s=1.0, index_mb=1.0, rss_peak_mb=1.0, build_s=1.0)
  fitted = scale.fits(rows, 384)
  exact = fitted["exact/s_per_query"]
  assert (exact["a"], exact["b"]) == (pytest.approx(2e-4), pytest.approx(1e-11))
  assert scale.at(exact, 21e6) == pytest.approx(2e-4 + 1e-11 * 21e6 * 768)
  memory = fitted["scann/rss_peak_mb"]
  assert (memory["a"], memory["b"]) == (pytest.approx(10), pytest.approx(8e-6))
  scann = fitted["scann/s_per_query"]
  assert (scann["c"], scann["p"]) == (pytest.approx(1e-6), pytest.approx(0.5))
  assert scann["measured_dim_ratio"] == pytest.approx(2) and scann["measured_at"] == 100_000
  assert scale.at(scann, 4e6) == pytest.approx(2 * 1e-6 * 2000)
  build = fitted["scann/build_s"]
  assert (build["c"], build["p"]) == (pytest.approx(3e-4), pytest.approx(0.9))
  # No row at 768: nothing measured, the same scaling.
  fitted = scale.fits([r for r in rows if r["dim"] == 384], 384)
  assert fitted["scann/build_s"]["dim_factor"] == 2
  assert fitted["scann/build_s"]["measured_dim_ratio"] is None


def test_synthetic_vectors():
  many = scale.vectors(scale.BLOCK + 100, 24)
  assert many.dtype == np.float32 and many.shape == (scale.BLOCK + 100, 24)
  np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1, atol=1e-5)
  np.testing.assert_array_equal(scale.vectors(scale.BLOCK + 100, 24), many)  # seeded
  queries = scale.vectors(scale.BLOCK + 100, 24, stream=1, count=50)
  assert queries.shape == (50, 24) and not np.allclose(queries, many[:50])
  # Topics grow as sqrt(N); a larger corpus keeps a smaller one's and adds more.
  assert [scale.topics(n) for n in (12_324, 4 * 12_324, 100 * 12_324)] == [64, 128, 640]
  subtopics = scale._subtopics  # pylint: disable=protected-access
  np.testing.assert_array_equal(subtopics(24, 3), subtopics(24, 5)[:3 * scale.SUBTOPICS])
  # Clustered: a row's nearest neighbour is far closer than a random row.
  sims = many[:200] @ many[200:].T
  assert np.median(sims.max(axis=1)) > 0.6 and abs(np.median(sims)) < 0.1


def test_bert_base_shapes_take_the_tokenizer_of_the_encoder(tmp_path):
  from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
  like = TextEncoder.from_pretrained(tiny.write(tmp_path, WORDS) / "question_encoder")
  small = bert.BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=24)
  encoder = scale.bert_base(like, small)
  assert encoder.tokenizer is like.tokenizer and encoder.dim == 16
  assert encoder.max_length == like.max_length and encoder.batch_size == like.batch_size
  vectors = encoder.encode(["river king", "war and peace music"])
  assert vectors.shape == (2, 16) and np.isfinite(vectors).all()
  assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


@pytest.mark.parametrize("flags", [["--sizes", "1000"], ["--sizes", "1000,1000"],
                                   ["--sizes", "0,10"], ["--queries", "0"],
                                   ["--passages", "-1"]])
def test_scale_rejects_bad_flags(capsys, flags):
  with pytest.raises(SystemExit) as exit_:
    scale.main(flags)
  assert exit_.value.code == 2
  assert "error:" in capsys.readouterr().err
