"""Answers from retrieved passages: the generation half of `python -m rag_jax.ask`.

    answerer = Answerer.from_config(config)
    results = answerer.answer(questions, hits)   # hits: per question, the retriever's k hits
    answerer.answer(questions, None)             # closed book: the generator alone

The generator reads each passage as its own prompt (`RagModel.contextualize`, the path
training and evaluation take from passages to contexts) and RAG
marginalises over them, greedily: RAG-Token mixes the k next-token distributions at every
step, RAG-Sequence decodes each passage's answer and keeps the one of the highest marginal
likelihood (thorough decoding). The doc prior p(z|x) is a softmax of the retrieval scores
divided by the config's `doc_temperature` (`temperature_sweep` is how it was chosen).

Questions are decoded `questions_per_batch` at a time, each batch padded to a few shapes (its
questions to the next power of two, the last one's rows repeated; prompts right-padded to a
multiple of `PROMPT_BUCKET` tokens), so a stream of questions compiles a few programs, not one
per batch, and a question typed alone costs one question's compute, not a full batch's.
"""

import dataclasses
import pathlib
from typing import Any, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rag_jax import errors
from rag_jax import marginalize
from rag_jax import prompts
from rag_jax import rag as rag_lib
from rag_jax.ask import heatmaps
from rag_jax.encoder import TextEncoder
from rag_jax.model import RagModel

KINDS = ("token", "sequence")
# Prompts are padded to a multiple of this many tokens (fewer shapes to compile).
PROMPT_BUCKET = 64


@dataclasses.dataclass
class Answerer:
  """A RAG model and how it answers.

  Attributes:
    model: the RagModel (its question encoder is the retriever's; only its generator runs).
    kind: "token" or "sequence".
    doc_temperature: p(z|x) = softmax(scores / doc_temperature).
    max_new_tokens: answer tokens, EOS included.
    questions_per_batch: questions decoded together.
  """
  model: RagModel
  kind: str = "token"
  doc_temperature: float = 1.0
  max_new_tokens: int = 32
  questions_per_batch: int = 8

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
    if not self.doc_temperature > 0:
      raise errors.UsageError(f"doc_temperature must be positive, got {self.doc_temperature}")
    if self.max_new_tokens < 1 or self.questions_per_batch < 1:
      raise errors.UsageError("max_new_tokens and questions_per_batch must be positive")

  @classmethod
  def from_config(cls, config, question_encoder: TextEncoder, log=print) -> "Answerer":
    """The config's generator (`generator`, `system_prompt`, `max_prompt_length`; the context
    `title + title_sep + text + doc_sep + question`) behind the retriever's question encoder,
    and its decoding settings (`check_config`)."""
    answerer = check_config(config)
    model = RagModel.from_parts(question_encoder, config.generator,
                                max_combined_length=config.max_prompt_length,
                                title_sep=config.title_sep, doc_sep=config.doc_sep)
    tokenizer = model.generator_tokenizer
    if tokenizer is None:
      raise ValueError(f"{config.generator}: the generator has no tokenizer")
    prompts.use_chat_template(model, config.system_prompt)
    size = sum(np.size(p) for p in jax.tree_util.tree_leaves(model.params["generator"]))
    log(f"generator {config.generator}: {type(model.generator).__name__}, {size / 1e6:.0f}M "
        f"parameters")
    answerer.model = model
    return answerer

  def answer(self, questions: Sequence[str], hits: Optional[Sequence[Sequence[Dict]]],
             ) -> List[Dict[str, Any]]:
    """Per question {"question", "answer", "tokens": the answer's token strings (EOS left
    out), "passages": per hit its "id", "title", "score", "prior" p(z|x), "posterior" and
    "text", "posteriors": [k, len(tokens)] (`doc_posteriors` of the answer's tokens)}.

    "posterior" is how much a passage counted for the whole answer (`rag.answer_posteriors`:
    for RAG-Sequence p(z | x, y); for RAG-Token the mean over the answer's tokens of
    p(z | x, y_i, y_<i); EOS left out). With `hits` None (closed book) there are no passages.
    """
    out = []
    for start in range(0, len(questions), self.questions_per_batch):
      chunk = list(questions[start:start + self.questions_per_batch])
      out.extend(self._answer_batch(chunk, None if hits is None else
                                    hits[start:start + self.questions_per_batch]))
    return out

  def batch_rows(self, n: int) -> int:
    """The questions a batch of n is padded to: the next power of two, at most
    questions_per_batch."""
    return min(1 << (n - 1).bit_length(), self.questions_per_batch)

  def _inputs(self, questions, hits):
    """Padded generator inputs of one batch: ids, mask [N * Z, S] and doc scores [N, Z] / T,
    N = `batch_rows(len(questions))` (the batch's last rows repeated)."""
    m = self.model
    ids, mask = m.contextualize(questions, None if hits is None else [list(h) for h in hits])
    if hits is None:
      scores = np.zeros((len(questions), 1), np.float32)
    else:
      scores = np.array([[h["score"] for h in row] for row in hits], np.float32)
    scores = scores / self.doc_temperature
    z = scores.shape[1]
    width = -(-ids.shape[1] // PROMPT_BUCKET) * PROMPT_BUCKET
    if not m.rag.gen.has_encoder:  # prompts as long as the longest; BART's are max_length
      ids = np.pad(ids, ((0, 0), (0, width - ids.shape[1])), constant_values=m.rag.gen.pad_token_id)
      mask = np.pad(mask, ((0, 0), (0, width - mask.shape[1])))
    extra = self.batch_rows(len(questions)) - len(questions)
    if extra:
      ids = np.concatenate([ids, np.tile(ids[-z:], (extra, 1))])
      mask = np.concatenate([mask, np.tile(mask[-z:], (extra, 1))])
      scores = np.concatenate([scores, np.tile(scores[-1:], (extra, 1))])
    return ids, mask, scores

  def _answer_batch(self, questions, hits):
    m = self.model
    ids, mask, scores = self._inputs(questions, hits)
    sequences = m.generate(ids, mask, scores, kind=self.kind,
                           decoding="greedy" if self.kind == "token" else "thorough",
                           num_beams=1, max_length=self.max_new_tokens + 1)
    posteriors = m.doc_posteriors(ids, mask, scores, sequences, kind=self.kind)
    prior = np.asarray(marginalize.doc_log_probs(jnp.asarray(scores)))
    tokenizer, eos = m.generator_tokenizer, m.rag.gen.eos_token_id
    results = []
    for b, question in enumerate(questions):
      answer = [int(t) for t in sequences[b, 1:]]
      n = answer.index(eos) if eos in answer else len(answer)
      post = posteriors[b, :, :n]
      if hits is None:
        passages = []
      else:
        whole = rag_lib.answer_posteriors(posteriors[b:b + 1], np.array([n]), self.kind)[0]
        passages = [{"id": h["id"], "title": h["title"], "score": h["score"],
                     "prior": float(np.exp(prior[b, z])), "posterior": float(whole[z]),
                     "text": h["text"]} for z, h in enumerate(hits[b])]
      results.append({"question": question,
                      "answer": tokenizer.decode(answer[:n], skip_special_tokens=True).strip(),
                      "tokens": [tokenizer.decode([t]) for t in answer[:n]],
                      "passages": passages, "posteriors": post if hits is not None else None})
    return results

  def temperature_sweep(self, questions: Sequence[str], hits: Sequence[Sequence[Dict]],
                        answers: Sequence[str], temperatures: Sequence[float]
                        ) -> Dict[float, Dict[str, float]]:
    """How likely the gold answers are under each doc-prior temperature: per temperature the
    mean over questions of -log p(answer | x) per answer token, for RAG-Token and RAG-Sequence.

    The target is the start token and the answer's tokens, no EOS: the probability that the
    generated answer begins with the gold one. One teacher-forced pass of the generator
    (`doc_token_log_probs`) serves every temperature: only p(z|x) changes.
    """
    m = self.model
    totals = {t: {"token": 0.0, "sequence": 0.0} for t in temperatures}
    count = 0
    for start in range(0, len(questions), self.questions_per_batch):
      qs = list(questions[start:start + self.questions_per_batch])
      ids, mask, _ = self._inputs(qs, hits[start:start + len(qs)])
      scores = np.array([[h["score"] for h in row] for row in hits[start:start + len(qs)]],
                        np.float32)
      rows = [[m.rag.gen.start_token_id] +
              m.generator_tokenizer(" ".join(a.split()), add_special_tokens=False)["input_ids"]
              for a in answers[start:start + len(qs)]]
      labels = np.full((self.batch_rows(len(qs)), max(map(len, rows))), m.rag.gen.pad_token_id,
                       np.int32)
      for i, r in enumerate(rows):
        labels[i, :len(r)] = r
      lp = m.doc_token_log_probs(ids, mask, labels)[:len(qs)]             # [N, Z, T - 1]
      token_mask = np.zeros(lp[:, 0].shape, np.int32)
      for i, r in enumerate(rows):
        token_mask[i, :len(r) - 1] = 1
      lengths = token_mask.sum(axis=1)
      for t in temperatures:
        for kind, ll in (("token", marginalize.rag_token_log_likelihood),
                         ("sequence", marginalize.rag_sequence_log_likelihood)):
          nll = -np.asarray(ll(jnp.asarray(lp), jnp.asarray(scores / t), jnp.asarray(token_mask)))
          totals[t][kind] += float(np.sum(nll / lengths))
      count += len(qs)
    return {t: {k: v / count for k, v in kinds.items()} for t, kinds in totals.items()}


def check_config(config) -> "Answerer":
  """An Answerer of the config's decoding settings (`kind`, `doc_temperature`,
  `max_new_tokens`, `questions_per_batch`, `max_prompt_length`), no model yet: bad values are
  a ValueError before any weights load."""
  if config.max_prompt_length < 16:
    raise ValueError(f"max_prompt_length must be at least 16, got {config.max_prompt_length}")
  return Answerer(None, kind=config.kind, doc_temperature=config.doc_temperature,
                  max_new_tokens=config.max_new_tokens,
                  questions_per_batch=config.questions_per_batch)


def write_heatmaps(results: Sequence[Dict[str, Any]], path: str) -> List[pathlib.Path]:
  """The paper's Figure 2 for each answered question: passages x answer tokens, the posterior
  of each passage at each token. One question: `path` itself; several: `path`'s stem with
  `-1`, `-2`, ... (in question order). Questions without passages or tokens are skipped."""
  path = pathlib.Path(path)
  written = []
  for number, r in enumerate(results, 1):
    if r["posteriors"] is None or not r["tokens"]:
      continue
    out = path if len(results) == 1 else path.with_name(f"{path.stem}-{number}{path.suffix}")
    labels = [f"{rank}. {p['title'][:40]}" for rank, p in enumerate(r["passages"], 1)]
    heatmaps.posterior_heatmap(r["posteriors"], [repr(t)[1:-1] for t in r["tokens"]], out,
                               doc_labels=labels, title=r["question"][:80])
    written.append(out)
  return written

