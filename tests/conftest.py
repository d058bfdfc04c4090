"""Shared fixtures: tiny random HF PyTorch models saved with `save_pretrained`."""

import numpy as np
import pytest
import torch


def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
  """Perturbs every parameter and buffer-like float tensor, so that no LayerNorm weight is
  1, no bias is 0 and a mistake in any of them shows in the outputs."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in model.state_dict().items():
      if p.is_floating_point() and "position_ids" not in name:
        p.add_(scale * torch.randn(p.shape, generator=gen))
  return model.eval()


def padded_batch(rng: np.random.Generator, lengths, vocab: int, pad_id: int, low: int = 3):
  """Random ids [B, max(lengths)] right-padded with pad_id, and the mask."""
  max_len = max(lengths)
  ids = rng.integers(low, vocab, size=(len(lengths), max_len))
  mask = np.zeros_like(ids)
  for i, n in enumerate(lengths):
    mask[i, :n] = 1
  ids = np.where(mask == 1, ids, pad_id)
  return ids.astype(np.int32), mask.astype(np.int32)


def max_abs(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def rel_err(a, ref) -> float:
  return max_abs(a, ref) / float(np.max(np.abs(np.asarray(ref, np.float64))))


@pytest.fixture(autouse=True)
def _seed_torch():
  """Seeds torch's global generator before every test. HF models draw their initial weights
  from it (randomize_ only perturbs them), so without this a test's weights would depend on
  which tests ran before it."""
  torch.manual_seed(0)


@pytest.fixture
def rng():
  return np.random.default_rng(0)
