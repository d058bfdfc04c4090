"""RAG-Token training step: rag_jax (jit) vs HF PyTorch RagTokenForGeneration, same run.

One step = question encoder -> doc scores against frozen document vectors -> RAG-Token loss
-> gradient -> AdamW update of the question encoder and the generator, dropout on, at
bart-base / dpr-base shapes (d 768, 6+6 BART layers, 12 BERT layers, vocab 50,265), random
weights (speed does not depend on their values), contexts of 128 tokens, targets of 20.
Each contestant runs in its own process; reported: median seconds per step and peak RSS
(GB, the whole process: weights, optimizer state, activations, XLA's compiler), and the
ratios HF / rag_jax. rag_jax runs twice: with XLA's default flags, and "tuned" with the CPU
flag below (XLA:CPU's memory-optimised instead of its default scheduler: 2.25 instead of
3.02 GB of temporaries at 4 x 5); it does not touch accelerators.

    python benchmarks/rag_loss.py                        # batch 4 x 5 docs, then 8 x 10
    python benchmarks/rag_loss.py --configs 4x5 --steps 3
"""

import argparse
import json
import os

import common

CONTEXT, TARGET, QUESTION = 128, 20, 32
LR, WEIGHT_DECAY = 1e-5, 0.01
TUNED_XLA_FLAGS = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"


def _inputs(batch: int, docs: int):
  return common.rag_token_inputs(batch, docs, question=QUESTION, context=CONTEXT, target=TARGET,
                                 question_vocab=common.DPR_BASE["vocab_size"],
                                 vocab=common.BART_BASE["vocab_size"],
                                 dim=common.DPR_BASE["hidden_size"])


def _hf_model(n_docs: int, path: str):
  import transformers  # pylint: disable=import-outside-toplevel
  config = transformers.RagConfig.from_question_encoder_generator_configs(
      transformers.DPRConfig(**common.DPR_BASE),
      transformers.BartConfig(**common.BART_BASE, dropout=0.1), n_docs=n_docs)
  model = transformers.RagTokenForGeneration(config)
  model.save_pretrained(path)
  return model


def _measure_hf(batch, docs, steps, path):
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  model = _hf_model(docs, path).train()
  opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
  inputs = _inputs(batch, docs)
  ctx, ctx_mask = (torch.tensor(x) for x in common.contexts(inputs, docs, CONTEXT))
  q_ids, q_mask, labels, doc_embeds = (torch.tensor(inputs[k]) for k in (
      "question_ids", "question_mask", "labels", "doc_embeds"))
  q_ids, ctx, labels = q_ids.long(), ctx.long(), labels.long()
  losses = []

  def step():
    opt.zero_grad()
    q = model.rag.question_encoder(q_ids, attention_mask=q_mask)[0]
    scores = torch.bmm(q.unsqueeze(1), doc_embeds.transpose(1, 2)).squeeze(1)
    loss = model(context_input_ids=ctx, context_attention_mask=ctx_mask, doc_scores=scores,
                 labels=labels, n_docs=docs, reduce_loss=False).loss.mean()
    loss.backward()
    opt.step()
    losses.append(loss.item())
  seconds = common.median_seconds(step, steps)
  return {"seconds": seconds, "peak_rss_gb": common.peak_rss_gb(), "loss": losses[0],
          "version": torch.__version__}


def _measure_jax(batch, docs, steps, path):
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from rag_jax.train import step as step_lib  # pylint: disable=import-outside-toplevel
  from rag_jax.model import RagModel  # pylint: disable=import-outside-toplevel
  model = RagModel.from_pretrained(path)
  tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)
  inputs = _inputs(batch, docs)
  # The library's step; it owns (and donates) the only copy of the params.
  train_step = step_lib.jit_train_step(model.rag, tx, common.step_config(docs, CONTEXT))
  run = {"state": step_lib.create_state(model.params, tx, seed=0), "losses": []}
  model.params = None

  def step():
    run["state"], metrics = train_step(run["state"], inputs, None)
    run["losses"].append(float(metrics["loss"]))
  seconds = common.median_seconds(step, steps)
  return {"seconds": seconds, "peak_rss_gb": common.peak_rss_gb(), "loss": run["losses"][0],
          "version": jax.__version__}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default="4x5,8x10", help="BATCHxDOCS,...")
  parser.add_argument("--steps", type=int, default=3, help="timed steps (after one warm-up)")
  parser.add_argument("--child", choices=("hf", "jax"), help=argparse.SUPPRESS)
  parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--docs", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--path", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    measure = _measure_hf if args.child == "hf" else _measure_jax
    print(json.dumps(measure(args.batch, args.docs, args.steps, args.path)))
    return

  import tempfile  # pylint: disable=import-outside-toplevel
  rows = []
  for spec in args.configs.split(","):
    batch, docs = (int(x) for x in spec.split("x"))
    with tempfile.TemporaryDirectory() as path:
      child = ["--batch", str(batch), "--docs", str(docs), "--steps", str(args.steps),
               "--path", path]
      hf = common.run_child(__file__, ["--child", "hf", *child])   # also writes the weights
      ours = common.run_child(__file__, ["--child", "jax", *child])
      tuned = common.run_child(__file__, ["--child", "jax", *child], {
          "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " " + TUNED_XLA_FLAGS).strip()})
    row = {"batch": batch, "docs": docs, "hf_s_per_step": round(hf["seconds"], 2),
           "hf_peak_rss_gb": round(hf["peak_rss_gb"], 2)}
    for name, r in (("rag_jax", ours), ("rag_jax_tuned", tuned)):
      row.update({f"{name}_s_per_step": round(r["seconds"], 2),
                  f"{name}_speedup": round(hf["seconds"] / r["seconds"], 2),
                  f"{name}_peak_rss_gb": round(r["peak_rss_gb"], 2),
                  f"{name}_memory_ratio": round(r["peak_rss_gb"] / hf["peak_rss_gb"], 2)})
    row["first_step_loss_hf_vs_rag_jax"] = [round(hf["loss"], 2), round(ours["loss"], 2)]
    rows.append(row)
    print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
  main()
