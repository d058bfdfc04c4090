"""The training loop against its bare jitted step, same shapes, same run.

    python benchmarks/train.py                  # bart-base / dpr-base, device retrieval
    python benchmarks/train.py --mode host      # the saved index searched on the host
    python benchmarks/train.py --quick          # tiny shapes: a smoke run

Both sides run `experiments/fever.py:tiny`'s data and index with random dpr-base and
bart-base weights (`rag_jax.weights.tiny` writes them; speed does not depend on their values):

- step: the run's jitted step (`step.make_steps(...).train`, the library's `train_step`)
  called back to back on one batch already gathered, retrieved and placed: nothing but the
  step; timed before and after the loop (steps/2 each), the mean kept, so that a drift of
  the machine's speed hits both;
- loop: `loop.train_and_evaluate` on the same `Run` and `Steps` (the same compiled step) for
  `steps` more: grain's batches, the per-step gather and placement, retrieval (in the step for
  `device`, on the host for `host`), the loss checks, metrics.jsonl, TensorBoard, the
  progress bar, with its evals off. Its time per step is the wall clock between its first and
  last log lines after `warmup` steps;
- checkpoint: one async orbax save of the state, start to finish, spread over
  `--checkpoint-every` steps (1000, experiments/fever.py's interval).

Reported: seconds per step of each, and the overhead loop / step - 1 + checkpoint / (interval x
step) (goal <= 10%).
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
  config.log_every_steps = 1
  config.checkpoint_every_steps = 10 ** 9  # the loop saves once, after its timed steps
  config.eval_every_steps = 10 ** 9
  config.rag.max_combined_length = args.context
  return config


def _model(args, workdir: pathlib.Path, config):
  """Writes the random checkpoints where the run looks for them (WORKDIR/tiny_model)."""
  from rag_jax import data  # pylint: disable=import-outside-toplevel
  from rag_jax.weights import tiny  # pylint: disable=import-outside-toplevel
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
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
  parser.add_argument("--checkpoint-every", type=int, default=1000,
                      help="the interval a checkpoint's cost is spread over (fever.py's)")
  parser.add_argument("--context", type=int, default=128, help="context tokens")
  parser.add_argument("--quick", action="store_true", help="tiny shapes")
  parser.add_argument("--json", action="store_true")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  from rag_jax import checkpoint, sharding  # pylint: disable=import-outside-toplevel
  from rag_jax.train import setup  # pylint: disable=import-outside-toplevel
  from rag_jax.train import input_pipeline  # pylint: disable=import-outside-toplevel
  from rag_jax.train import loop  # pylint: disable=import-outside-toplevel
  from rag_jax.train import retrieval  # pylint: disable=import-outside-toplevel
  from rag_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.WARNING)

  with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp) / "run"
    config = _config(args)
    _model(args, workdir, config)
    run = setup.build(config, workdir)
    steps = step_lib.make_steps(run.rag, run.tx, run.step_config, run.state_sharding)
    rows = input_pipeline.train_batches(len(run.train_examples), config.batch_size,
                                        config.seed)[0]
    arrays = input_pipeline.gather(run.train.arrays, rows)
    batch, index = retrieval.BatchRetriever.of(run, steps).train_inputs(run.state.params, arrays)
    holder = {"state": run.state}

    def bare():
      # Under the rules the loop traces its step under, so both run one compiled program.
      with sharding.axis_rules(run.mesh, sharding.logical_rules(config.fsdp)):
        holder["state"], metrics = steps.train(holder["state"], batch, index)
      metrics["loss"].block_until_ready()

    # The bare step before and after the loop (the machine's speed drifts), the loop between,
    # all on the one compiled step.
    before = common.median_seconds(bare, args.steps // 2, warmup=args.warmup)
    run.state = holder["state"]
    start = int(jax.device_get(run.state.step))
    config.num_train_steps = start + args.warmup + args.steps
    marks = {}
    write = loop.MetricsWriter.write

    def timed_write(self, step, values):
      marks.setdefault(step, time.perf_counter())
      write(self, step, values)
    loop.MetricsWriter.write = timed_write
    holder["state"] = loop.train_and_evaluate(config, workdir, run=run, steps=steps)["state"]
    loop.MetricsWriter.write = write
    after = common.median_seconds(bare, args.steps // 2, warmup=0)
    timed = sorted(s for s in marks if s > start + args.warmup - 1)
    first, last = timed[0], timed[-1]
    loop_s = (marks[last] - marks[first]) / (last - first)
    step_s = (before + after) / 2
    # One checkpoint of the final state, start to finish (the loop's own save of it came
    # after its last timed step), spread over the config's checkpoint interval.
    manager = checkpoint.Manager(pathlib.Path(tmp) / "save", keep=1)
    tick = time.perf_counter()
    manager.save(0, holder["state"])
    manager.wait()
    save_s = time.perf_counter() - tick
    manager.close()
  result = {"mode": args.mode, "shapes": "tiny" if args.quick else "dpr-base + bart-base",
            "batch": config.batch_size, "docs": config.retrieval.k, "context": args.context,
            "steps": args.steps,
            "step_s": round(step_s, 4), "step_s_before": round(before, 4),
            "step_s_after": round(after, 4), "loop_s": round(loop_s, 4),
            "loop_overhead": round(loop_s / step_s - 1, 4), "checkpoint_s": round(save_s, 2),
            "checkpoint_every": args.checkpoint_every,
            "overhead": round(loop_s / step_s - 1 + save_s / (args.checkpoint_every * step_s), 4),
            "devices": jax.device_count()}
  if args.json:
    print(json.dumps(result))
    return
  print(f"{result['shapes']}, batch {result['batch']} x {result['docs']} docs, contexts "
        f"{args.context}, {args.mode} retrieval, {result['devices']} device(s)")
  print(f"bare step: {step_s:.3f} s/step   loop: {loop_s:.3f} s/step "
        f"({100 * result['loop_overhead']:+.1f}%)   one checkpoint: {save_s:.1f} s")
  print(f"overhead with a checkpoint every {args.checkpoint_every} steps: "
        f"{100 * result['overhead']:+.1f}% (goal <= +10%)")


if __name__ == "__main__":
  main()
