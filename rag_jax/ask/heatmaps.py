"""Document-posterior heatmaps (the paper's Figure 2): documents x generated tokens."""

import os
from typing import Optional, Sequence

import numpy as np


def posterior_heatmap(posteriors: np.ndarray, tokens: Sequence[str], path: os.PathLike, *,
                      doc_labels: Optional[Sequence[str]] = None,
                      title: str = "p(z | x, y_i, y_<i)") -> None:
  """Writes a PNG heatmap of one example's document posteriors.

  Args:
    posteriors: [Z, T] columns summing to 1 (RagModel.doc_posteriors for one example).
    tokens: the T generated tokens, as text.
    path: the PNG to write.
    doc_labels: Z row labels (default "doc 1" ...).
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  z, t = posteriors.shape
  if len(tokens) != t:
    raise ValueError(f"{len(tokens)} token labels for {t} columns")
  doc_labels = list(doc_labels or [f"doc {i + 1}" for i in range(z)])
  fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * t + 2), max(2.0, 0.45 * z + 1.2)))
  image = ax.imshow(posteriors, cmap="Blues", vmin=0.0, vmax=1.0, aspect="auto")
  ax.set_xticks(range(t), labels=list(tokens), rotation=60, ha="right", fontsize=8)
  ax.set_yticks(range(z), labels=doc_labels, fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
