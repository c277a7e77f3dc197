"""Analyses of lottery-ticket runs: the weight-correlation indicator R_p (`correlation`) and the
sanity checks of Ma et al. (`sanity`).

Example:
    >>> from sparse_lottery.analysis import r_p
    >>> w = {"fc.weight": torch.arange(10.0)}
    >>> r_p(w, w, 0.2)
    1.0
"""

from .correlation import level_correlation, r_p, r_p_table, top_p_indices
from .sanity import CONDITIONS, one_shot_experiment, sanity_checks, verdict

__all__ = [
    "CONDITIONS",
    "level_correlation",
    "one_shot_experiment",
    "r_p",
    "r_p_table",
    "sanity_checks",
    "top_p_indices",
    "verdict",
]
