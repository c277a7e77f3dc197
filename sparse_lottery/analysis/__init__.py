"""Analyses of lottery-ticket runs (RESEARCH.md §2–6):

- `stability`: `instability(run, level, k_list)` trains two copies of a level's subnetwork
  from the rewind point θk that differ only in SGD noise and measures the error barrier on the
  linear path between them (Frankle et al. 2020).
- `overlap`: IoU and Hamming distance between masks, `collect_masks(root)`; `overlap_report`:
  heat maps and tables.
- `correlation`: the weight-correlation indicator R_p (Liu et al. 2021).
- `sanity`: the sanity checks of Ma et al. (2021) and their verdicts.
- `finetune`: pruning & fine-tuning vs lottery tickets at the same budget (Liu et al. 2021).
- `jackpot`: `lottery_jackpot(run, densities)` searches masks on the pretrained level 0 with
  frozen weights (Zhang/Lin et al. 2021); the pure parts are in `jackpot_search`.
- `transfer`: `transfer(run, target, levels)` trains a run's tickets on another dataset with a
  new head (Mehta 2019), against the dense transfer and random tickets.

CLI: `sparse-lottery stability --level L --k 0,100`, `sparse-lottery overlap [root]`,
`sparse-lottery sanity --lrs 0.01,0.1`, `sparse-lottery finetune --lrs 0.01,0.1`,
`sparse-lottery jackpot --density 0.1`,
`sparse-lottery transfer --target mnist1d_shifted --levels 5`.

Example:
    >>> import torch
    >>> from sparse_lottery.analysis import barrier, iou, r_p
    >>> barrier([0.1, 0.1])
    0.0
    >>> iou({"w": torch.ones(3, dtype=torch.bool)}, {"w": torch.ones(3, dtype=torch.bool)})
    1.0
    >>> w = {"fc.weight": torch.arange(10.0)}
    >>> r_p(w, w, 0.2)
    1.0
"""

from .correlation import level_correlation, r_p, r_p_table, top_p_indices
from .finetune import finetune_comparison, start_weights, train_method
from .jackpot import JackpotHparams, lottery_jackpot
from .jackpot_search import magnitude_masks, short_restriction
from .overlap import collect_masks, hamming, iou, overlap_matrix
from .overlap_report import plot_overlap, write_overlap
from .sanity import CONDITIONS, one_shot_experiment, sanity_checks, verdict
from .stability import barrier, error_path, instability, interpolate, recompute_norm_stats
from .transfer import transfer
from .transfer_model import transfer_model

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
    "CONDITIONS",
    "finetune_comparison",
    "start_weights",
    "train_method",
    "level_correlation",
    "one_shot_experiment",
    "r_p",
    "r_p_table",
    "sanity_checks",
    "top_p_indices",
    "verdict",
    "JackpotHparams",
    "lottery_jackpot",
    "magnitude_masks",
    "short_restriction",
    "transfer",
    "transfer_model",
]
