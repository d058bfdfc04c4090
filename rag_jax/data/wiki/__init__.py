"""Tasks derived deterministically from the embedded Wikipedia (`rag_jax.assets.wiki_summaries`),
for training demos that need no download.

`cache.ensure()` writes, once, into `$RAG_JAX_CACHE/wiki-tasks-{digest}/` (`cache.name()`: a
digest of this package's sources and the asset's identity):

  passages.tsv               the retrieval corpus (DPR's `id<TAB>text<TAB>title`, `read_tsv`)
  passages_swapped.tsv       the same rows with the hot-swapped facts changed (swap)
  fever/{split}.jsonl        FEVER's official JSONL (reader kind "fever")
  nq/{split}.json            DPR's retriever JSON (kind "dpr_qa", path `nq/{split}.json`),
                             each record with its `question_type`
  jeopardy/{split}.source    answer -> clue, the seq2seq layout (kind "jeopardy")
  jeopardy/{split}.target

with split in train, dev, test and test_swapped. `python -m rag_jax.data.wiki` does the same
and prints `build.counts()`, the figures of the modules' docstrings (tests/test_wiki_tasks.py
checks that they are). The modules, each with how its part is built and its counts:

  text       articles, their splits, sentences, values (years, numbers, countries), passages
  claims     FEVER's SUPPORTS / REFUTES / NOT ENOUGH INFO claims
  questions  NQ-style questions by type (title, year, country, number)
  clues      Jeopardy clues
  swap       the hot swap: which test facts change, the swapped passages and golds
  build      all tasks in memory, their files, their counts
  cache      the cache directory, `ensure`, and the configs' `wiki-tasks:` paths (`resolve`)
"""
