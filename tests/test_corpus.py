"""Corpus readers stream, split articles into balanced passages of at most 100 words (no
short tails) and name bad lines; asset corpora resolve to a JSONL file; the passage store
round-trips any text and rejects a damaged store on open."""

import gzip
import hashlib
import inspect
import itertools
import json
import os

import numpy as np
import pytest

from rag_jax.index import corpus
from rag_jax.index.corpus import CorpusError, PassageStore, ReadStats


def _words(prefix: str, n: int) -> list:
  return [f"{prefix}{i}" for i in range(n)]


def _write_jsonl(path, records) -> None:
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False))
      f.write("\n")


def _error(fn, *args, **kwargs) -> str:
  with pytest.raises(CorpusError) as info:
    fn(*args, **kwargs)
  message = str(info.value)
  assert "\n" not in message
  return message


# ------------------------------------------------------------------------------------------
# chunk_words.


def test_chunk_words_boundaries():
  words = _words("w", 250)
  chunks = corpus.chunk_words(" ".join(words))
  assert chunks == [" ".join(words[:84]), " ".join(words[84:167]), " ".join(words[167:])]
  assert [len(c.split()) for c in corpus.chunk_words(" ".join(_words("w", 200)))] == [100, 100]
  # A fixed split would leave a one-word tail here.
  assert [len(c.split()) for c in corpus.chunk_words(" ".join(_words("w", 101)))] == [51, 50]


def test_chunk_words_makes_no_fragments():
  """Every length: the fewest chunks of at most `words`, sizes within one of each other, the
  words in order; so no chunk of a split text is under half of `words`."""
  for words in (1, 7, 100):
    for n in range(1, 3 * words + 2):
      text = " ".join(_words("w", n))
      sizes = [len(c.split()) for c in corpus.chunk_words(text, words)]
      assert len(sizes) == -(-n // words) and max(sizes) <= words
      assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
      assert " ".join(corpus.chunk_words(text, words)) == text
      if len(sizes) > 1:
        assert min(sizes) >= words // 2


def test_chunk_words_whitespace_and_small_cases():
  assert corpus.chunk_words("a  b\tc\n\nd e", words=2) == ["a b", "c d", "e"]
  assert corpus.chunk_words("") == []
  assert corpus.chunk_words(" \n\t ") == []
  assert corpus.chunk_words("one") == ["one"]
  with pytest.raises(ValueError):
    corpus.chunk_words("a b", words=0)


def test_tsv_passages_are_not_resplit(tmp_path):
  """DPR's passages are given: a short one stays as it is (no balancing across rows)."""
  path = tmp_path / "psgs.tsv"
  long_text = " ".join(_words("x", 150))
  path.write_text(f"id\ttext\ttitle\n1\t{long_text}\tA\n2\tcapital city.\tA\n")
  assert [p["text"] for p in corpus.read_tsv(path)] == [long_text, "capital city."]


# ------------------------------------------------------------------------------------------
# Asset corpora.


def test_an_asset_corpus_resolves_to_its_jsonl_once(tmp_path, monkeypatch):
  monkeypatch.setenv("RAG_JAX_CACHE", str(tmp_path))
  articles = [{"title": "Tasmania", "text": " ".join(_words("t", 102)), "topic": "geo"},
              {"title": "Nile", "text": "The Nile flows north."}]
  calls = []
  monkeypatch.setitem(corpus.ASSET_CORPORA, "wiki-summaries-en",
                      lambda: calls.append(1) or articles)
  path = corpus.resolve_source("asset:wiki-summaries-en", "jsonl")
  assert path.parent == tmp_path / "corpora" and path.suffix == ".jsonl"
  assert [json.loads(line) for line in path.read_text().splitlines()] == articles
  assert corpus.resolve_source("asset:wiki-summaries-en") == path and calls == [1]  # cached
  passages = list(corpus.read_passages(path))
  assert [p["id"] for p in passages] == ["1-0", "1-1", "2-0"]
  assert [len(p["text"].split()) for p in passages] == [51, 51, 4]
  assert corpus.resolve_source(tmp_path / "x.tsv", "tsv") == tmp_path / "x.tsv"


@pytest.mark.parametrize("spec, fmt, message", [
    ("asset:wiki-summaries-en", "tsv", "asset:wiki-summaries-en holds JSONL articles, not tsv"),
    ("asset:all-MiniLM-L6-v2", None, "asset:all-MiniLM-L6-v2 is not a corpus (corpus assets: "
     "asset:wiki-summaries-en)"),
    ("asset:nope", "jsonl", "asset:nope is not a known asset"),
])
def test_asset_corpus_errors(spec, fmt, message):
  assert message in _error(corpus.resolve_source, spec, fmt)


# ------------------------------------------------------------------------------------------
# JSONL articles.


def test_jsonl_articles_to_passages(tmp_path):
  path = tmp_path / "articles.jsonl"
  long_words = _words("x", 250)
  _write_jsonl(path, [
      {"title": "Long", "text": " ".join(long_words), "url": "ignored"},
      {"title": "Empty", "text": "   "},
      {"title": "Ünïcode", "text": "naïve café 東京"},
  ])
  stats = ReadStats()
  passages = list(corpus.read_jsonl(path, stats=stats))
  assert passages == [
      {"id": "1-0", "title": "Long", "text": " ".join(long_words[:84])},
      {"id": "1-1", "title": "Long", "text": " ".join(long_words[84:167])},
      {"id": "1-2", "title": "Long", "text": " ".join(long_words[167:])},
      {"id": "3-0", "title": "Ünïcode", "text": "naïve café 東京"},
  ]
  assert (stats.records, stats.passages, stats.skipped) == (3, 4, 0)


def test_jsonl_ids_are_stable(tmp_path):
  path = tmp_path / "articles.jsonl"
  _write_jsonl(path, [{"title": f"t{i}", "text": " ".join(_words("w", 7 * i))}
                      for i in range(30)])
  first = list(corpus.read_jsonl(path, words=10))
  second = list(corpus.read_jsonl(path, words=10))
  assert first == second
  ids = [p["id"] for p in first]
  assert len(set(ids)) == len(ids)


def test_jsonl_skipped_line_does_not_renumber_later_ones(tmp_path):
  good = tmp_path / "good.jsonl"
  bad = tmp_path / "bad.jsonl"
  _write_jsonl(good, [{"title": "a", "text": "a"}, {"title": "b", "text": "b"},
                      {"title": "c", "text": "c"}])
  _write_jsonl(bad, [{"title": "a", "text": "a"}, "{not json", {"title": "c", "text": "c"}])
  good_ids = {p["title"]: p["id"] for p in corpus.read_jsonl(good)}
  bad_ids = {p["title"]: p["id"] for p in corpus.read_jsonl(bad, on_error="skip")}
  assert bad_ids == {"a": good_ids["a"], "c": good_ids["c"]}


@pytest.mark.parametrize("line, problem", [
    ("{not json", "bad JSON"),
    ('{"title": "cut", "te', "bad JSON (Unterminated string starting at: column 18)"),
    ('["a list"]', "expected a JSON object"),
    ('{"text": "no title"}', "missing 'title'"),
    ('{"title": "t"}', "missing 'text'"),
    ('{"title": 3, "text": "x"}', "'title' is int"),
    ('{"title": "t", "text": null}', "'text' is NoneType"),
])
def test_jsonl_malformed_line_names_file_and_line(tmp_path, line, problem):
  path = tmp_path / "articles.jsonl"
  _write_jsonl(path, [{"title": "ok", "text": "fine"}, "", line])
  message = _error(list, corpus.read_jsonl(path))
  assert message.startswith(f"{path}: line 3: ")
  assert problem in message


def test_jsonl_bad_utf8_is_one_bad_line(tmp_path):
  path = tmp_path / "articles.jsonl"
  path.write_bytes(b'{"title": "a", "text": "x"}\n{"title": "\xff", "text": "y"}\n'
                   b'{"title": "c", "text": "z"}\n')
  assert "line 2: not UTF-8" in _error(list, corpus.read_jsonl(path))
  stats = ReadStats()
  assert [p["id"] for p in corpus.read_jsonl(path, on_error="skip", stats=stats)] == ["1-0", "3-0"]
  assert stats.skipped == 1


def test_jsonl_skip_mode_counts(tmp_path):
  path = tmp_path / "articles.jsonl"
  _write_jsonl(path, ["{bad", {"title": "t", "text": "a b c"}, '{"title": 1, "text": ""}',
                      "[]", {"title": "u", "text": "d"}])
  stats = ReadStats()
  passages = list(corpus.read_jsonl(path, on_error="skip", stats=stats))
  assert [p["id"] for p in passages] == ["2-0", "5-0"]
  assert (stats.records, stats.passages, stats.skipped) == (2, 2, 3)
  assert len(stats.errors) == 3 and stats.errors[0].startswith(f"{path}: line 1: ")


def test_missing_file_and_bad_on_error(tmp_path):
  assert "no such file" in _error(list, corpus.read_jsonl(tmp_path / "nope.jsonl"))
  assert "no such file" in _error(list, corpus.read_tsv(tmp_path / "nope.tsv"))
  with pytest.raises(ValueError):
    list(corpus.read_jsonl(tmp_path / "x.jsonl", on_error="ignore"))


# ------------------------------------------------------------------------------------------
# DPR TSV.

# As in DPR's psgs_w100.tsv: text quoted when it holds quotes, which are doubled.
DPR_TSV = ('id\ttext\ttitle\n'
           '1\t"Aaron Aaron ( or ; ""Ahärôn"") is a prophet"\tAaron\n'
           '2\tplain text, no quotes\t"Title, with comma"\n'
           '3\t"a tab\there and a\nnewline"\tT3\n')


def test_tsv_reads_quoted_fields(tmp_path):
  path = tmp_path / "psgs_w100.tsv"
  path.write_text(DPR_TSV, encoding="utf-8")
  stats = ReadStats()
  assert list(corpus.read_tsv(path, stats=stats)) == [
      {"id": "1", "title": "Aaron", "text": 'Aaron Aaron ( or ; "Ahärôn") is a prophet'},
      {"id": "2", "title": "Title, with comma", "text": "plain text, no quotes"},
      {"id": "3", "title": "T3", "text": "a tab\there and a\nnewline"},
  ]
  assert (stats.records, stats.passages, stats.skipped) == (3, 3, 0)


def test_tsv_columns_by_header_name_and_gzip(tmp_path):
  path = tmp_path / "psgs.tsv.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write("title\tid\ttext\nT\t7\tsome text\n")
  assert list(corpus.read_passages(path)) == [{"id": "7", "title": "T", "text": "some text"}]


@pytest.mark.parametrize("header", ["id\ttext\n", "id\ttitle\tbody\n", "1\tsome text\tT\n"])
def test_tsv_bad_header_always_raises(tmp_path, header):
  path = tmp_path / "p.tsv"
  path.write_text(header + "1\ttext\tT\n", encoding="utf-8")
  message = _error(list, corpus.read_tsv(path, on_error="skip"))
  assert message.startswith(f"{path}: line 1: bad header")


def test_tsv_header_of_json_lines_points_at_articles(tmp_path):
  path = tmp_path / "p.tsv"
  path.write_text('{"title": "a", "text": "b"}\n', encoding="utf-8")
  assert "JSON lines are articles: --articles" in _error(list, corpus.read_tsv(path))


def test_tsv_empty_file(tmp_path):
  path = tmp_path / "p.tsv"
  path.write_text("", encoding="utf-8")
  assert "empty file" in _error(list, corpus.read_tsv(path))


def test_tsv_malformed_rows(tmp_path):
  path = tmp_path / "p.tsv"
  # Line 4 starts a row after the 2-line quoted field of the row on lines 2-3.
  path.write_text('id\ttext\ttitle\n1\t"two\nlines"\tA\n2\tonly two\n3\tok\tC\n'
                  '\tno id\tD\n4\textra\tE\tcolumn\n', encoding="utf-8")
  message = _error(list, corpus.read_tsv(path))
  assert message == f"{path}: line 4: 2 columns, expected 3"
  stats = ReadStats()
  passages = list(corpus.read_tsv(path, on_error="skip", stats=stats))
  assert [p["id"] for p in passages] == ["1", "3"]
  assert (stats.records, stats.skipped) == (2, 3)
  assert [e.split(": ", 1)[1] for e in stats.errors] == [
      "line 4: 2 columns, expected 3", "line 6: empty id", "line 7: 4 columns, expected 3"]


# ------------------------------------------------------------------------------------------
# Streaming.


def test_readers_are_lazy(tmp_path):
  """The first passage comes out although the rest of the file is garbage: nothing reads
  ahead."""
  jsonl = tmp_path / "big.jsonl"
  tsv = tmp_path / "big.tsv"
  with open(jsonl, "w", encoding="utf-8") as f:
    f.write(json.dumps({"title": "first", "text": "hello world"}) + "\n")
    f.write("garbage\n" * 50_000)
  with open(tsv, "w", encoding="utf-8") as f:
    f.write("id\ttext\ttitle\n1\thello\tfirst\n")
    f.write("garbage\n" * 50_000)
  for reader in (corpus.read_jsonl(jsonl), corpus.read_tsv(tsv)):
    assert inspect.isgenerator(reader)
    [first] = itertools.islice(reader, 1)
    assert first["title"] == "first"
    reader.close()


def test_unknown_format(tmp_path):
  assert "unknown corpus format" in _error(corpus.read_passages, tmp_path / "x.csv")


# ------------------------------------------------------------------------------------------
# The passage store.

TRICKY = [
    {"id": "a", "title": "Tabs\tand\nnewlines", "text": "line one\nline two\ttabbed\r\n"},
    {"id": "b", "title": "Ünïcode 東京", "text": "emoji 😀 and \"quotes\" and \\ backslash"},
    {"id": "c", "title": "", "text": ""},
    {"id": "d", "title": "nul", "text": "a\x00b \u2028 sep"},
]


def test_store_round_trip(tmp_path):
  passages = TRICKY + [{"id": str(i), "title": f"t{i}", "text": f"text {i}"}
                       for i in range(100)]
  # A generator, as from a reader: the store must not need a list.
  count = corpus.write_passages((p for p in passages), tmp_path / "store")
  assert count == len(passages)
  assert sorted(os.listdir(tmp_path / "store")) == ["meta.json", "offsets.npy",
                                                   "passages.jsonl"]
  with PassageStore(tmp_path / "store") as store:
    assert len(store) == len(passages)
    for i in (57, 0, 3, 1, len(passages) - 1, 2):  # random access, any order
      assert store[i] == passages[i]
    assert store[np.int64(5)] == passages[5]
    assert store.get_many(np.array([9, 1, 9])) == [passages[9], passages[1], passages[9]]
    assert list(store) == passages
    for bad in (len(passages), -1):
      with pytest.raises(IndexError):
        store[bad]  # pylint: disable=pointless-statement
    store.verify()


def test_store_records_sha256(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)
  meta = json.loads((tmp_path / "meta.json").read_text())
  assert meta["sha256"] == hashlib.sha256((tmp_path / "passages.jsonl").read_bytes()).hexdigest()
  assert meta["count"] == len(TRICKY)
  assert PassageStore(tmp_path).sha256 == meta["sha256"]


def test_store_from_reader_and_empty(tmp_path):
  tsv = tmp_path / "psgs_w100.tsv"
  tsv.write_text(DPR_TSV, encoding="utf-8")
  assert corpus.write_passages(corpus.read_tsv(tsv), tmp_path / "s") == 3
  assert PassageStore(tmp_path / "s")[0]["text"].startswith('Aaron Aaron ( or ; "Ahärôn")')
  assert corpus.write_passages([], tmp_path / "empty") == 0
  assert len(PassageStore(tmp_path / "empty")) == 0


def test_store_rewrite_replaces_and_leaves_no_temp_files(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)
  corpus.write_passages(TRICKY[:1], tmp_path)
  assert len(PassageStore(tmp_path)) == 1
  assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


def test_store_failed_write_keeps_old_store(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)

  def broken():
    yield TRICKY[0]
    yield {"id": "x", "title": None, "text": "t"}

  assert "passage 1: 'title' is NoneType" in _error(corpus.write_passages, broken(), tmp_path)
  assert list(PassageStore(tmp_path)) == TRICKY
  assert sorted(os.listdir(tmp_path)) == ["meta.json", "offsets.npy", "passages.jsonl"]


def test_store_truncated_data_file(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)
  data = tmp_path / "passages.jsonl"
  data.write_bytes(data.read_bytes()[:-5])
  message = _error(PassageStore, tmp_path)
  assert message.startswith(f"{data}: ") and "truncated" in message


def test_store_tampered_data_fails_verify(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)
  data = tmp_path / "passages.jsonl"
  raw = data.read_bytes()
  data.write_bytes(raw.replace(b"line one", b"LINE ONE"))  # same size: opens, fails verify
  store = PassageStore(tmp_path)
  assert "does not match" in _error(store.verify)


@pytest.mark.parametrize("name", ["passages.jsonl", "offsets.npy", "meta.json"])
def test_store_missing_file(tmp_path, name):
  corpus.write_passages(TRICKY, tmp_path)
  (tmp_path / name).unlink()
  assert _error(PassageStore, tmp_path) == f"{tmp_path / name}: missing file (not a passage store?)"


def test_store_bad_offsets(tmp_path):
  corpus.write_passages(TRICKY, tmp_path)
  offsets_path = tmp_path / "offsets.npy"
  offsets = np.load(offsets_path)
  np.save(offsets_path, offsets[:-1])
  assert _error(PassageStore, tmp_path).startswith(f"{offsets_path}: int64 [4], expected")
  shuffled = offsets.copy()
  shuffled[[1, 2]] = shuffled[[2, 1]]
  np.save(offsets_path, shuffled)
  assert "do not start at 0 and increase" in _error(PassageStore, tmp_path)
  offsets_path.write_bytes(b"not numpy")
  assert _error(PassageStore, tmp_path).startswith(f"{offsets_path}: unreadable")
