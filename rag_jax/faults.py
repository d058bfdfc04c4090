"""Fault injection for the tests: `RAG_JAX_FAULT=POINT[@N][:SIGNAL]` sends this process
SIGNAL (default SIGKILL) the N-th time (default: the first) it reaches `reach("POINT")`:
SIGKILL for a crash there, SIGINT for a Ctrl-C, SIGSTOP to hold the process there while a
test does something beside it. In a multi-process job, `RAG_JAX_FAULT_PROCESS=i` limits it
to the process whose RAG_JAX_PROCESS_ID is i (a preemption notice that reaches one host).

A leaf: imports nothing of rag_jax. Each site a test kills at calls `reach` with its name, so
that a test reaches that point deterministically instead of racing a timer; with the
variable unset (always, outside the tests) `reach` only reads it. The points:

- `train_step`: after a train step, before anything else of the loop;
- `checkpoint_write`: a checkpoint's asynchronous write started, not finished;
- `eval_write`: between two of an evaluation's files;
- `index_embed`: after a batch of passages embedded, its shard not written;
- `index_rename`: a finished index about to be renamed into place.
"""

import os
import signal

POINTS = ("train_step", "checkpoint_write", "eval_write", "index_embed", "index_rename")
_reached = {}


def reach(point: str) -> None:
  """Signals the process here if RAG_JAX_FAULT names `point` and this is its N-th visit."""
  spec = os.environ.get("RAG_JAX_FAULT")
  if not spec:
    return
  where, _, signame = spec.partition(":")
  name, _, nth = where.partition("@")
  if name not in POINTS:
    raise ValueError(f"RAG_JAX_FAULT={spec}: unknown point; expected one of {POINTS}")
  if name != point:
    return
  only = os.environ.get("RAG_JAX_FAULT_PROCESS")
  if only is not None and only != os.environ.get("RAG_JAX_PROCESS_ID", "0"):
    return
  _reached[point] = _reached.get(point, 0) + 1
  if _reached[point] == int(nth or 1):
    os.kill(os.getpid(), getattr(signal, signame or "SIGKILL"))
