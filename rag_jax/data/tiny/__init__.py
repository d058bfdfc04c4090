"""The tiny tasks the `:tiny` configs train on (package data, so that an installed rag_jax
runs them): a made-up world and its tasks in the official formats, seconds on a CPU.

  fever/   a tiny FEVER task: 48 passages (DPR psgs_w100 TSV, `PASSAGES`, what every `:tiny`
           config retrieves from) from 16 articles of a made-up world (rivers, towns, people,
           animals), 48 train and 16 dev claims (official FEVER JSONL; SUPPORTS restate a
           passage's fact, REFUTES swap its object for another of the same kind, NOT ENOUGH
           INFO use a relation no passage states), the dev SUPPORTS/REFUTES claims again in
           KILT's format, and vocab.txt, a WordPiece vocabulary of every word in them
           (lowercase ASCII words and a few punctuation marks, 189 in all).
  qa/      the QA, abstractive-QA and Jeopardy tasks over the same world (DPR's retriever JSON
           and QA csv, MS MARCO v2.1, SearchQA's Jeopardy as seq2seq) and the one vocabulary
           they share, so that a tiny NQ checkpoint starts a tiny WQ or CT run.

Written with fixed seeds by `python -m rag_jax.data.tiny.make_fever` and `python -m
rag_jax.data.tiny.make_qa` (each module's docstring lists its files); rerun them rather than
editing the files by hand.
"""

import pathlib

DIR = pathlib.Path(__file__).resolve().parent
FEVER = DIR / "fever"
QA = DIR / "qa"
PASSAGES = FEVER / "passages.tsv"
