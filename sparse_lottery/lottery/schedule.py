"""The learning rate as a pure function of the iteration, so that rewinding to iteration k (or a
resumed run) is exactly "evaluate it at k" — no scheduler state to save or replay.

Example:
    >>> from sparse_lottery.lottery.hparams import TrainingHparams
    >>> hp = TrainingHparams(lr=0.1, schedule="step", milestones="2it,4it", warmup="0it")
    >>> [round(learning_rate(hp, s, total=6, steps_per_epoch=1), 4) for s in range(6)]
    [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
"""

import math

from .hparams import TrainingHparams, parse_duration


def learning_rate(hp: TrainingHparams, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of iteration `step` (0-based) of a `total`-iteration schedule: linear
    warmup from lr/warmup to lr over the warmup iterations, times the schedule's factor
    ("constant"; "step": ×gamma at each milestone reached; "cosine": half a cosine to 0 at
    `total`)."""
    lr = hp.lr
    warmup = parse_duration(hp.warmup, steps_per_epoch, "--warmup")
    if step < warmup:
        lr *= (step + 1) / warmup
    if hp.schedule == "step":
        milestones = [
            parse_duration(m, steps_per_epoch, "--milestones")
            for m in filter(None, hp.milestones.split(","))
        ]
        lr *= hp.gamma ** sum(step >= m for m in milestones)
    elif hp.schedule == "cosine":
        lr *= 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))
    return lr
