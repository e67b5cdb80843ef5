"""Resuming from damaged checkpoint directories, and keeping the last good checkpoint.

Shared by every Orbax checkpoint directory a run resumes from (the LM / acoustic trainer,
the codec, its CTC teacher):

- `restore_newest(manager, restore)`: tries the steps newest first. A step that does not
  restore (truncated array file, missing item folder, truncated data-iterator JSON, ...)
  is skipped; once an older step restores, each skipped one gets one warning naming it
  and the error, and is moved aside to `<dir>/<step>.broken` (Orbax ignores that name),
  never deleted. If no step restores, nothing is moved and the newest step's error is
  raised: when every checkpoint fails the same way it is the config that does not fit
  them (a changed shape), which is the user's to fix, not a corruption to clean up.
- `DivergenceGuard`: flags a finite loss above `factor` x a running reference (non-finite
  losses already stop the trainers before anything is saved). Checkpoints saved while a
  spike is recent carry `metrics[DIVERGED] = 1`; `LastGood` is an Orbax preservation
  policy that always keeps the newest checkpoint without that mark, so no number of
  diverged saves can push the last good one out of a keep-N directory.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from absl import logging
from etils import epath

T = TypeVar("T")
DIVERGED = "diverged"  # checkpoint metric: 1 when saved within a loss spike


def move_aside(directory: str | os.PathLike, step: int) -> epath.Path:
    """Renames <directory>/<step> to <step>.broken (or .broken-2, ...); returns the new path."""
    directory = epath.Path(directory)
    source = directory / str(step)
    target = directory / f"{step}.broken"
    n = 1
    while target.exists():
        n += 1
        target = directory / f"{step}.broken-{n}"
    source.rename(target)
    return target


def _reason(err: BaseException) -> str:
    """The error's type and first line, shortened (Orbax errors carry whole trees)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if len(text) > 300:
        text = text[:300] + " ..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def restore_newest(
    manager: Any, restore: Callable[[int], T], *, what: str = "checkpoint"
) -> tuple[int, T] | None:
    """(step, restore(step)) for the newest step of an Orbax `manager` that restores.

    None when there is no checkpoint. See the module docstring for what happens to the
    steps that fail. `what` names the run in the warnings ("codec", "LM").
    """
    failures: list[tuple[int, BaseException]] = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            value = restore(step)
        except Exception as err:  # any failure to read a step makes it unusable here
            failures.append((step, err))
            continue
        for bad, err in failures:
            moved = move_aside(manager.directory, bad)
            logging.warning(
                "%s: checkpoint %d does not restore (%s); moved it aside to %s and resumed "
                "from checkpoint %d",
                what,
                bad,
                _reason(err),
                moved,
                step,
            )
        if failures:
            manager.reload()
        return step, value
    if failures:
        step, err = failures[0]
        err.add_note(
            f"{what}: no checkpoint in {manager.directory} restores (tried steps "
            f"{[s for s, _ in failures]}); nothing was moved. If the config changed, restore "
            "it; if the files are damaged, move the broken step folders aside."
        )
        raise err
    return None


@dataclasses.dataclass
class LastGood:
    """Orbax preservation policy: keeps the newest checkpoint not marked `DIVERGED`.

    Checkpoints without metrics (older runs) count as good.
    """

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any = None) -> list[bool]:
        del context
        keep = [False] * len(checkpoints)
        for i in sorted(range(len(checkpoints)), key=lambda i: checkpoints[i].step, reverse=True):
            if not is_diverged(checkpoints[i].metrics):
                keep[i] = True
                break
        return keep


def is_diverged(metrics: dict[str, Any] | None) -> bool:
    return bool(metrics and metrics.get(DIVERGED))


class DivergenceGuard:
    """Watches the training loss for spikes (module docstring).

    The reference is an exponential moving average of the losses seen, spikes excluded,
    so a slow decrease is never a spike and a spike does not raise its own bar. A loss
    above `factor` x reference marks everything saved until the next checkpoint after
    the spike as diverged. factor <= 0 turns the guard off.
    """

    def __init__(self, factor: float, *, what: str = "training", decay: float = 0.9):
        self.factor = float(factor)
        self.what = what
        self.decay = decay
        self.reference: float | None = None
        self.spiked_since_save = False
        self.last_good: int | None = None

    def update(self, step: int, loss: float) -> bool:
        """Adds one step's loss; True (and a warning) when it is a spike."""
        if self.factor <= 0 or not math.isfinite(loss):
            return False
        ref = self.reference
        if ref is not None and ref > 0 and loss > self.factor * ref:
            if not self.spiked_since_save:
                logging.warning(
                    "%s: loss spike at step %d: %.4g > %g x the running loss %.4g; checkpoints "
                    "saved until it passes are marked diverged and the last good one (%s) is kept",
                    self.what,
                    step,
                    loss,
                    self.factor,
                    ref,
                    "none yet" if self.last_good is None else f"step {self.last_good}",
                )
            self.spiked_since_save = True
            return True
        self.reference = loss if ref is None else self.decay * ref + (1 - self.decay) * loss
        return False

    def checkpoint_metrics(self, step: int) -> dict[str, float]:
        """The metrics to save with checkpoint `step` ({DIVERGED: 0 or 1}); starts a new window."""
        diverged = self.spiked_since_save
        self.spiked_since_save = False
        if not diverged:
            self.last_good = step
        return {DIVERGED: float(diverged)}
