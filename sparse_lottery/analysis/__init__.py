"""Analyses of finished IMP runs: instability (linear mode connectivity) and mask overlap.

- `stability`: `instability(run, level, k_list)` trains two copies of a level's subnetwork
  from the rewind point θk that differ only in SGD noise and measures the error barrier on the
  linear path between them (Frankle et al. 2020; RESEARCH.md §2).
- `overlap`: IoU and Hamming distance between masks, `collect_masks(root)`; `overlap_report`:
  heat maps and tables.

CLI: `sparse-lottery stability --level L --k 0,100` and `sparse-lottery overlap [root]`.

Example:
    >>> import torch
    >>> from sparse_lottery.analysis import barrier, interpolate, iou
    >>> barrier([0.1, 0.1])
    0.0
    >>> iou({"w": torch.ones(3, dtype=torch.bool)}, {"w": torch.ones(3, dtype=torch.bool)})
    1.0
"""

from .overlap import collect_masks, hamming, iou, overlap_matrix
from .overlap_report import plot_overlap, write_overlap
from .stability import barrier, error_path, instability, interpolate, recompute_norm_stats

__all__ = [
    "barrier",
    "collect_masks",
    "error_path",
    "hamming",
    "instability",
    "interpolate",
    "iou",
    "overlap_matrix",
    "plot_overlap",
    "recompute_norm_stats",
    "write_overlap",
]
