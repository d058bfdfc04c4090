"""The open-domain QA, MS MARCO, Jeopardy and KILT readers on small files in each official
format (tests/data/tasks), the tfds readers on `tfds.testing.mock_data` (random records, and
hand-written ones in tfds's feature layout), and each kind of malformed file: a one-line
DataError naming the file and line (or the record, where the format has no lines)."""

import gzip
import pathlib
import shutil

import numpy as np
import pytest

from rag_jax import data
from rag_jax.data import Example, dpr, kilt, msmarco, seq2seq, tfds_qa
from rag_jax.evaluate import metrics
from test_data import _error  # the DataError's message, checked to be one line

TASKS = pathlib.Path(__file__).parent / "data" / "tasks"
DPR = TASKS / "dpr"


def _write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.write_text(text, encoding="utf-8")
  return path


# ------------------------------------------------------------------------------------------
# DPR's files: QA CSV, retriever JSON, CuratedTrec.


def test_dpr_qa_csv():
  examples = data.read("dpr_qa", str(DPR / "nq-{split}.qa.csv"), "dev")
  assert [e.id for e in examples] == ["dev:1", "dev:2", "dev:3", "dev:4", "dev:5"]
  assert examples[0] == Example("dev:1", "who got the first nobel prize in physics",
                                ("Wilhelm Conrad Röntgen",))
  # DPR writes a list holding an apostrophe with double quotes; both answers are kept.
  assert examples[3].targets == ("Harry Potter and the Sorcerer's Stone", "Sorcerer's Stone")
  assert examples[1].targets == ("May 18 , 2018",)
  assert all(e.gold_titles == () and e.label is None for e in examples)
  # By path: ids carry the file's name.
  assert dpr.read_dpr(DPR / "nq-dev.qa.csv")[4].id == "nq-dev.qa.csv:5"


def test_dpr_retriever_json_matches_kilt_version():
  examples = data.read("dpr_qa", str(DPR / "biencoder-nq-{split}.json"), "dev")
  assert [e.id for e in examples] == ["dev:1", "dev:2", "dev:3"]
  # The positive passages' titles, deduplicated in order; negatives do not count.
  assert examples[0].gold_titles == ("Does He Love You", "Linda Davis")
  assert examples[2].gold_titles == ()
  # The same three questions in KILT's format: same questions and answers.
  kilt_examples = data.read("kilt", str(TASKS / "kilt" / "nq-{split}-kilt.jsonl"), "dev")
  assert [(e.source, e.targets) for e in examples] == [(e.source, e.targets)
                                                       for e in kilt_examples]
  assert examples[:2] == [Example(f"dev:{i}", k.source, k.targets, k.gold_titles)
                          for i, k in enumerate(kilt_examples[:2], 1)]


def test_dpr_gzipped_and_directory(tmp_path):
  with open(DPR / "nq-dev.qa.csv", "rb") as f, gzip.open(tmp_path / "nq-dev.qa.csv.gz", "wb") as g:
    shutil.copyfileobj(f, g)
  with open(DPR / "biencoder-nq-dev.json", "rb") as f, gzip.open(tmp_path / "b-dev.json.gz",
                                                                  "wb") as g:
    shutil.copyfileobj(f, g)
  plain = data.read("dpr_qa", str(DPR / "nq-{split}.qa.csv"), "dev")
  assert data.read("dpr_qa", str(tmp_path / "nq-{split}.qa.csv.gz"), "dev") == plain
  assert len(dpr.read_dpr(tmp_path / "b-dev.json.gz")) == 3
  shutil.copy(DPR / "nq-dev.qa.csv", tmp_path / "dev.qa.csv")
  assert data.read("dpr_qa", tmp_path, "dev") == plain


def test_curatedtrec_patterns():
  examples = data.read("curatedtrec", str(DPR / "curatedtrec-{split}.qa.csv"), "test")
  assert len(examples) == 4
  nixon, titanic = examples[1], examples[3]
  assert nixon.targets == (r"(Richard\s+(M\.\s+|Milhous\s+)?)?Nixon",)
  assert titanic.targets == ("1912", r"April\s+(14|15),?\s+1912")
  # The patterns as the regex metric reads them.
  assert metrics.regex_match_score("Richard Milhous Nixon", nixon.targets) == 1.0
  assert metrics.regex_match_score("nixon", nixon.targets) == 1.0
  assert metrics.regex_match_score("Gerald Ford", nixon.targets) == 0.0
  assert metrics.regex_match_score("april 15 1912", titanic.targets) == 1.0
  assert metrics.regex_match(["5280 feet", "Cork"], [examples[2].targets,
                                                     examples[0].targets]) == 50.0


@pytest.mark.parametrize("line, problem", [
    ("who sings\t['Linda Davis']\textra", "3 tab-separated fields, expected 2: question, answers"),
    ("who sings ['Linda Davis']", "1 tab-separated fields, expected 2: question, answers"),
    ("who sings\tLinda Davis", "answers 'Linda Davis' are not a Python list literal"),
    ("who sings\t['Linda', 3]", "answers holds 3, expected strings"),
    ("who sings\t'Linda Davis'", "answers is 'Linda Davis', expected a list of strings"),
    ("who sings\t[]", "no answers"),
    ("\t['Linda Davis']", "empty question"),
])
def test_dpr_malformed_qa_line(tmp_path, line, problem):
  path = _write(tmp_path / "nq-dev.qa.csv", f"who got the first nobel prize\t['Röntgen']\n\n"
                                             f"{line}\n")
  assert _error(dpr.read_dpr, path) == f"{path}:3: {problem}"


def test_curatedtrec_bad_pattern_and_bad_utf8(tmp_path):
  path = _write(tmp_path / "ct-test.qa.csv", "Capital of Ireland?\t['Dublin']\n"
                                              "Who resigned?\t['(Richard Nixon']\n")
  # Plain QA files take any string; CuratedTrec's must compile.
  assert len(dpr.read_dpr(path)) == 2
  message = _error(dpr.read_curatedtrec, str(tmp_path / "ct-{split}.qa.csv"), "test")
  assert message.startswith(f"{path}:2: answer pattern '(Richard Nixon' does not compile (")
  path.write_bytes(b"q\t['a']\nq\t['\xff']\n")
  assert _error(dpr.read_dpr, path) == f"{path}:2: not UTF-8 (invalid start byte at byte 4)"


@pytest.mark.parametrize("text, line, problem", [
    ('{"question": "q", "answers": ["a"]}', 1, "expected a JSON array ('[' first)"),
    ('\n\n[\n  {"question": "q",\n   "answers": ["a"]},\n  {"question": "r"}\n]', 6,
     "missing 'answers'"),
    ('[\n  {"question": "q", "answers": ["a"]},\n  ["q", ["a"]]\n]', 3,
     "expected a JSON object, got list"),
    ('[\n  {"question": "q", "answers": ["a"]}\n  {"question": "r", "answers": ["b"]}\n]', 3,
     "bad JSON (expected ',' or ']' after an array element)"),
    ('[\n  {"question": "q",\n   "answers": ["a",]}\n]', 3,
     "bad JSON (Expecting value: column 20)"),
    ('[\n  {"question": "q", "answers": ["a"],\n   "positive_ctxs": [{"text": "t"}]}\n]', 2,
     "missing 'title'"),
    ('[\n  {"question": "q", "answers": "a"}\n]', 2, "'answers' is str, expected list"),
    ('[{"question": "q", "answers": ["a"]}]\n[]', 2, "bad JSON (extra data after the array)"),
    ('', 1, "expected a JSON array ('[' first)"),
])
def test_dpr_malformed_retriever_json(tmp_path, text, line, problem):
  path = _write(tmp_path / "nq-dev.json", text)
  assert _error(dpr.read_dpr, path) == f"{path}:{line}: {problem}"


def test_empty_retriever_array(tmp_path):
  assert dpr.read_dpr(_write(tmp_path / "nq-dev.json", " [ ]\n")) == []


# ------------------------------------------------------------------------------------------
# MS MARCO.


def test_msmarco_nlg_keeps_well_formed_answers():
  examples = data.read("msmarco", TASKS / "msmarco", "dev")
  assert [e.id for e in examples] == ["9652", "135424"]
  assert examples[0] == Example("9652", "what is the population of pittsburgh pa",
                                ("The population of Pittsburgh, Pennsylvania is 303,625.",))
  assert len(examples[1].targets) == 2


def test_msmarco_qna_falls_back_to_answers_and_skips_no_answer():
  examples = data.read("msmarco", TASKS / "msmarco", "dev", task="qna")
  # "No Answer Present." (query 101337) is no answer; a well-formed answer wins where there is one.
  assert [e.id for e in examples] == ["9652", "19285", "135424"]
  assert examples[1].targets == ("10 to 12 minutes",)
  assert examples[0].targets == ("The population of Pittsburgh, Pennsylvania is 303,625.",)
  with pytest.raises(ValueError, match="unknown MS MARCO task 'qa'"):
    msmarco.read_msmarco(TASKS / "msmarco" / "dev_v2.1.json", task="qa")


def test_msmarco_eval_set_is_unlabelled_and_gz(tmp_path):
  expected = [Example("1048585", "how tall is the eiffel tower", ()),
              Example("1048642", "what causes a tsunami", ())]
  assert data.read("msmarco", TASKS / "msmarco", "test") == expected
  with open(TASKS / "msmarco" / "eval_v2.1_public.json", "rb") as f, gzip.open(
      tmp_path / "eval_v2.1_public.json.gz", "wb") as g:
    shutil.copyfileobj(f, g)
  assert data.read("msmarco", tmp_path, "test") == expected
  assert data.read("msmarco", str(tmp_path / "{split}_v2.1_public.json.gz"), "eval") == expected
  message = _error(data.read, "msmarco", tmp_path, "dev")
  assert message.startswith(f"{tmp_path / 'dev_v2.1.json'}: no such file (MS MARCO v2.1 ")


@pytest.mark.parametrize("text, problem", [
    ('{"query": {"0": "q"},\n "query_id": {"0": 1}, "answers": {"0": ["a"]]}',
     "2: bad JSON (Expecting ',' delimiter: column 46)"),
    ('[]', " expected a JSON object of columns, got list"),
    ('{"query_id": {"0": 1}}', " column 'query' is None, expected an object of rows"),
    ('{"query": {"0": "q"}, "query_id": {"0": 1}, "answers": ["a"]}',
     " column 'answers' is ['a'], expected an object of rows"),
    ('{"query": {"0": "q", "1": "r"}, "query_id": {"0": 1, "1": 2}, '
     '"answers": {"0": ["a"], "1": ["b"]}, "wellFormedAnswers": {"0": "[]", "1": "b"}}',
     " row '1': 'wellFormedAnswers' is 'b', expected a list of strings"),
    ('{"query": {"0": 5}, "query_id": {"0": 1}, "wellFormedAnswers": {"0": ["a"]}}',
     " row '0': 'query' is 5, expected a non-empty string"),
    ('{"query": {"0": "q"}, "query_id": {}, "wellFormedAnswers": {"0": ["a"]}}',
     " row '0': no 'query_id'"),
    ('{"query": {"0": "q"}, "query_id": {"0": 1.5}}',
     " row '0': 'query_id' is 1.5, expected an integer or a non-empty string"),
])
def test_msmarco_malformed(tmp_path, text, problem):
  path = _write(tmp_path / "dev_v2.1.json", text)
  assert _error(msmarco.read_msmarco, path) == f"{path}:{problem}"


# ------------------------------------------------------------------------------------------
# KILT and Jeopardy.


def test_kilt_dev_and_test():
  dev = kilt.read_kilt(TASKS / "kilt" / "nq-dev-kilt.jsonl")
  assert dev[0] == Example("-1381557037705218166", "who sings does he love me with reba",
                           ("Linda Davis",), ("Does He Love You", "Linda Davis"))
  assert dev[2].targets == ("Willem-Alexander", "King Willem-Alexander")
  assert dev[2].gold_titles == ("Monarchy of the Netherlands",
                                "Willem-Alexander of the Netherlands")
  test = data.read("kilt", str(TASKS / "kilt" / "nq-{split}-kilt.jsonl"), "test_without_answers")
  assert [(e.id, e.targets, e.gold_titles) for e in test] == [
      ("6915606477668963399", (), ()), ("-5519416592612433470", (), ())]


@pytest.mark.parametrize("line, problem", [
    ('{"id": "1", "input": "q", "output": [{"answer": "a"}', "bad JSON (Expecting ',' delimiter"),
    ('{"input": "q", "output": [{"answer": "a"}]}', "missing 'id'"),
    ('{"id": "1", "input": "q", "output": {"answer": "a"}}', "'output' is dict, expected list"),
    ('{"id": "1", "input": "q", "output": ["a"]}', "'output' holds a str, expected an object"),
    ('{"id": "1", "input": "q", "output": [{"answer": 3}]}', "'answer' is int, expected str"),
    ('{"id": "1", "input": "q", "output": [{"provenance": [{"wikipedia_id": "7"}]}]}',
     "missing 'title'"),
    ('{"id": "1", "input": " ", "output": []}', "empty 'input'"),
    ('["1", "q"]', "expected a JSON object, got list"),
])
def test_kilt_malformed(tmp_path, line, problem):
  path = _write(tmp_path / "dev.jsonl", '{"id": "0", "input": "p"}\n' + line + "\n")
  assert _error(data.read, "kilt", tmp_path, "dev").startswith(f"{path}:2: {problem}")


def test_jeopardy_is_the_seq2seq_reader():
  assert data.READERS["jeopardy"] is seq2seq.read_seq2seq
  examples = data.read("jeopardy", TASKS / "jeopardy", "test")
  # Answer entity in, Jeopardy question out.
  assert examples[1] == Example("test:2", "Francis Scott Key", (
      'His 1814 poem "Defence of Fort M\'Henry" became a national anthem',))
  assert len(examples) == 4


# ------------------------------------------------------------------------------------------
# tfds: NQ-open, TriviaQA, WebQuestions.


def _tfds():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


@pytest.mark.parametrize("kind", ["nq_open", "trivia_qa", "web_questions"])
def test_tfds_readers_on_mock_data(kind):
  tfds = _tfds()
  with tfds.testing.mock_data(num_examples=3):
    examples = data.read(kind, None, "validation")
  assert len(examples) == 3
  for i, example in enumerate(examples):
    assert isinstance(example.source, str) and example.source
    assert example.targets and all(isinstance(t, str) for t in example.targets)
    if kind != "trivia_qa":
      assert example.id == f"validation:{i}"
  # Random records differ from one another.
  assert len({e.source for e in examples}) == 3


# Records as tfds.data_source hands them back: strings as bytes, sequences as numpy arrays.
_RECORDS = {
    "nq_open": [
        {"question": b"who got the first nobel prize in physics",
         "answer": np.array([b"Wilhelm Conrad R\xc3\xb6ntgen"], dtype=object)},
        {"question": b"when is the next deadpool movie being released",
         "answer": np.array([b"May 18 , 2018", b"May 18, 2018"], dtype=object)},
    ],
    "trivia_qa": [
        {"question": b"Which Lloyd Webber musical premiered in the US on 10th December 1993?",
         "question_id": b"tc_33",
         "question_source": b"http://www.triviacountry.com/",
         "answer": {"value": b"Sunset Boulevard",
                    "aliases": np.array([b"Sunset Blvd", b"Sunset Boulevard",
                                         b"West Sunset Boulevard"], dtype=object),
                    "normalized_aliases": np.array([b"sunset blvd", b"sunset boulevard",
                                                    b"west sunset boulevard"], dtype=object),
                    "normalized_value": b"sunset boulevard", "type": b"WikipediaEntity",
                    "matched_wiki_entity_name": b"", "normalized_matched_wiki_entity_name": b""},
         "entity_pages": {"doc_source": np.array([], dtype=object),
                          "filename": np.array([], dtype=object),
                          "title": np.array([], dtype=object),
                          "wiki_context": np.array([], dtype=object)},
         "search_results": {"description": np.array([], dtype=object)}},
    ],
    "web_questions": [
        {"url": b"http://www.freebase.com/view/en/justin_bieber",
         "question": b"what is the name of justin bieber brother?",
         "answers": np.array([b"Jazmyn Bieber", b"Jaxon Bieber"], dtype=object)},
    ],
}
_EXPECTED = {
    "nq_open": [
        Example("validation:0", "who got the first nobel prize in physics",
                ("Wilhelm Conrad Röntgen",)),
        Example("validation:1", "when is the next deadpool movie being released",
                ("May 18 , 2018", "May 18, 2018")),
    ],
    "trivia_qa": [
        Example("tc_33", "Which Lloyd Webber musical premiered in the US on 10th December 1993?",
                ("Sunset Boulevard", "Sunset Blvd", "West Sunset Boulevard")),
    ],
    "web_questions": [
        Example("validation:0", "what is the name of justin bieber brother?",
                ("Jazmyn Bieber", "Jaxon Bieber")),
    ],
}


def _source_of(records, asked):
  def as_data_source(self, split, **kwargs):
    del kwargs
    asked.append((self.name, self.builder_config.name if self.builder_config else None, split))
    return records
  return as_data_source


@pytest.mark.parametrize("kind", sorted(_RECORDS))
def test_tfds_records_to_examples(kind):
  tfds, asked = _tfds(), []
  with tfds.testing.mock_data(as_data_source_fn=_source_of(_RECORDS[kind], asked)):
    assert data.read(kind, "/data/tfds", "validation") == _EXPECTED[kind]
  name, _, config = tfds_qa.DATASETS[kind].partition("/")
  assert asked == [(name, config or None, "validation")]


def test_tfds_trivia_qa_hidden_test_answers_and_malformed_records():
  tfds = _tfds()
  hidden = dict(_RECORDS["trivia_qa"][0], question_id=b"tc_99",
                answer=dict(_RECORDS["trivia_qa"][0]["answer"], value=b"",
                            aliases=np.array([], dtype=object)))
  with tfds.testing.mock_data(as_data_source_fn=_source_of([hidden], [])):
    assert data.read("trivia_qa", None, "test")[0].targets == ()
  bad = [_RECORDS["nq_open"][0], {"question": b"q", "answer": b"not a list"},
         {"question": b"\xff", "answer": np.array([], dtype=object)}, {"answer": []}]
  for index, problem in [(1, "answer is bytes, expected a sequence of texts"),
                         (2, "question is not UTF-8 (invalid start byte at byte 0)"),
                         (3, "missing 'question'")]:
    with tfds.testing.mock_data(as_data_source_fn=_source_of(bad[:1] + bad[index:index + 1],
                                                             [])):
      message = _error(data.read, "nq_open", None, "validation")
    assert message == f"natural_questions_open validation[1]: {problem}"


def test_tfds_unprepared_dataset(tmp_path):
  message = _error(data.read, "web_questions", tmp_path, "test")
  assert message.startswith(f"{tmp_path}: cannot open web_questions split 'test' (")
  assert message.endswith("prepare it once with `tfds build web_questions "
                          "--file_format=array_record`")
  with pytest.raises(ValueError, match="unknown tfds QA dataset 'nq'"):
    tfds_qa.read_tfds("nq", None, "validation")
