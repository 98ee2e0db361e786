"""The paper-style figure: input digits above what the spatial transformer made of them."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["save_rectification_figure"]


def _as_images(array, name: str) -> np.ndarray:
    a = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array, dtype=np.float32)
    if a.ndim != 4:
        raise ValueError(f"{name} must be [N, C, H, W], got shape {a.shape}")
    return a


def _show(ax, img: np.ndarray) -> None:
    # img [C, H, W]; one channel is grey, three are RGB.
    if img.shape[0] == 3:
        ax.imshow(np.clip(img.transpose(1, 2, 0), 0.0, 1.0))
    else:
        ax.imshow(img[0], cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def save_rectification_figure(
    inputs,
    warped,
    path: str | os.PathLike,
    title: str = "",
    labels: Sequence[str] | None = None,
    max_columns: int = 12,
) -> Path:
    """Write a PNG: one column per sample, inputs on top, ST outputs below.

    ``inputs`` [N, C, H, W] and ``warped`` [N, K*C, Ho, Wo] (torch or numpy, pixels in [0, 1]);
    with K > 1 (transformers in parallel) each transformer gets its own row. ``labels``
    (e.g. predicted classes) title the columns. The file is replaced atomically.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _as_images(inputs, "inputs")
    v = _as_images(warped, "warped")
    if v.shape[0] != x.shape[0] or v.shape[1] % x.shape[1]:
        raise ValueError(f"warped {v.shape} does not pair with inputs {x.shape}")
    n = min(x.shape[0], max_columns)
    c = x.shape[1]
    k = v.shape[1] // c
    rows = 1 + k
    fig, axes = plt.subplots(rows, n, figsize=(1.0 * n + 0.8, 1.1 * rows + 0.5), squeeze=False)
    for j in range(n):
        _show(axes[0, j], x[j])
        if labels is not None:
            axes[0, j].set_title(str(labels[j]), fontsize=8)
        for t in range(k):
            _show(axes[1 + t, j], v[j, t * c : (t + 1) * c])
    axes[0, 0].set_ylabel("input", fontsize=8)
    for t in range(k):
        axes[1 + t, 0].set_ylabel("ST output" if k == 1 else f"ST {t + 1}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
