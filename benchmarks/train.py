"""The training loop against its bare jitted step, same shapes, same run.

    python benchmarks/train.py                  # bart-base / dpr-base, device retrieval
    python benchmarks/train.py --mode host      # the saved index searched on the host
    python benchmarks/train.py --quick          # tiny shapes: a smoke run

Both sides run `experiments/fever.py:tiny`'s data and index with random dpr-base and
bart-base weights (`rag_jax.tiny` writes them; speed does not depend on their values):

- step: the `Run`'s own jitted step (the library's `train_step`) called back to back on one
  batch already gathered, retrieved and placed: nothing but the step;
- loop: `train.train_and_evaluate` for the same number of steps: the grain iterator, the
  per-step gather and placement, retrieval (in the step for `device`, on the host for
  `host`), the loss checks, metrics.jsonl, TensorBoard, the progress bar and async orbax
  checkpoints, with its evals off. Its time per step is read from the wall clock of the steps
  after the first log line (compilation and the first checkpoint's setup excluded).

Reported: seconds per step of each and the loop's overhead, loop / step - 1 (goal <= 10%).
"""

import argparse
import json
import pathlib
import tempfile
import time

import common

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _config(args):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location("fever", ROOT / "experiments" / "fever.py")
  fever = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(fever)
  config = fever.get_config("tiny")
  config.retrieval.mode = args.mode
  config.num_train_steps = args.warmup + args.steps
  config.log_every_steps = args.warmup
  config.checkpoint_every_steps = args.checkpoint_every
  config.eval_every_steps = 10 ** 9
  config.rag.max_combined_length = args.context
  return config


def _model(args, workdir: pathlib.Path, config):
  """Writes the random checkpoints where the run looks for them (WORKDIR/tiny_model)."""
  from rag_jax import data, tiny  # pylint: disable=import-outside-toplevel
  from rag_jax.index import corpus  # pylint: disable=import-outside-toplevel
  examples = data.read("fever", config.data.path, "train") + data.read("fever", config.data.path,
                                                                        "dev")
  words = data.words([e.source for e in examples] + [
      f"{p['title']} {p['text']}" for p in corpus.read_passages(config.retrieval.passages)])
  words = sorted(set(words) | {"/"} | set(config.data.label_words.values()))
  shapes = {} if args.quick else {"question_encoder": common.DPR_BASE,
                                  "generator": common.BART_BASE}
  tiny.write(workdir / "tiny_model", words, seed=config.seed, **shapes)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mode", choices=("device", "host"), default="device")
  parser.add_argument("--steps", type=int, default=12, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
  parser.add_argument("--checkpoint-every", type=int, default=5)
  parser.add_argument("--context", type=int, default=128, help="context tokens")
  parser.add_argument("--quick", action="store_true", help="tiny shapes")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  from rag_jax import experiment, input_pipeline, train  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)

  with tempfile.TemporaryDirectory() as tmp:
    bare_dir, loop_dir = pathlib.Path(tmp) / "bare", pathlib.Path(tmp) / "loop"
    config = _config(args)
    for d in (bare_dir, loop_dir):
      _model(args, d, config)

    # The bare step: the run's jitted step on one ready batch.
    run = experiment.build(config, bare_dir)
    rows = input_pipeline.train_batches(len(run.train_examples), config.batch_size,
                                        config.seed)[0]
    arrays = input_pipeline.gather(run.train.arrays, rows)
    state = run.state
    if run.device_index is not None:
      batch = run.place({k: v for k, v in arrays.items() if k != "gold"})
      index = run.device_index
    else:
      batch, index = run.retrieved(state.params, arrays), None
    holder = {"state": state}

    def bare():
      holder["state"], metrics = run._step(holder["state"], batch, index)  # pylint: disable=protected-access
      metrics["loss"].block_until_ready()
    step_s = common.median_seconds(bare, args.steps, warmup=args.warmup)
    holder.clear()

    # The loop: the whole train_and_evaluate; steps after the first log line timed.
    marks = {}
    write = train.MetricsWriter.write

    def timed_write(self, step, values):
      marks.setdefault(step, time.perf_counter())
      write(self, step, values)
    train.MetricsWriter.write = timed_write
    train.train_and_evaluate(config, loop_dir)
    train.MetricsWriter.write = write
    first, last = min(marks), max(marks)
    loop_s = (marks[last] - marks[first]) / (last - first)
  result = {"mode": args.mode, "shapes": "tiny" if args.quick else "dpr-base + bart-base",
            "batch": config.batch_size, "docs": config.retrieval.k, "context": args.context,
            "steps": args.steps, "checkpoint_every": args.checkpoint_every,
            "step_s": round(step_s, 4), "loop_s": round(loop_s, 4),
            "overhead": round(loop_s / step_s - 1, 4), "devices": jax.device_count()}
  if args.json:
    print(json.dumps(result))
    return
  print(f"{result['shapes']}, batch {result['batch']} x {result['docs']} docs, contexts "
        f"{args.context}, {args.mode} retrieval, {result['devices']} device(s)")
  print(f"bare step: {step_s:.3f} s/step   loop: {loop_s:.3f} s/step   "
        f"overhead {100 * result['overhead']:+.1f}% (goal <= +10%)")


if __name__ == "__main__":
  main()
