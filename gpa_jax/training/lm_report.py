"""The LM's loss table: validation loss per task next to its unigram baseline.

    from gpa_jax.training import lm_report, trainer
    result = trainer.train(config, workdir)             # config.data.source = "tasks"
    print(lm_report.loss_table(result.eval_metrics))    # the run's last eval

    python -m launch.lm_report --config=configs/gpa_tiny.py --workdir=W   # after a run

The unigram baseline (gpa_jax.tasks.baseline) is the cross-entropy of the eval split's
output tokens under the training split's smoothed unigram distribution: what a model
that ignores all context scores. The trainer writes it beside each eval as
eval/<task>/unigram_loss, so the table reads both from one metrics dict. Losses are in
nats per loss token (the output segment and <eos>); `ratio` = eval loss / unigram;
`ppl` = exp(eval loss), the teacher-forced perplexity per output token (WHISPER-GPT's
measure, so the audio-input variants compare on it directly).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from gpa_jax.training import data_iter as data_lib

UNIGRAM = "unigram_loss"


def table_rows(
    eval_metrics: Mapping[str, float], task_names: tuple[str, ...] | None = None
) -> list[dict[str, Any]]:
    """One row per task that has both an eval loss and a baseline in `eval_metrics`."""
    names = task_names or tuple(
        sorted({k.split("/")[1] for k in eval_metrics if k.endswith(f"/{UNIGRAM}")})
    )
    rows = []
    for task in names:
        loss = eval_metrics.get(f"eval/{task}/loss")
        base = eval_metrics.get(f"eval/{task}/{UNIGRAM}")
        if loss is None or base is None:
            continue
        rows.append(
            dict(
                task=task,
                eval_loss=float(loss),
                unigram_loss=float(base),
                ratio=float(loss) / float(base) if base else math.nan,
                ppl=_perplexity(float(loss)),
                accuracy=eval_metrics.get(f"eval/{task}/accuracy"),
                loss_tokens=eval_metrics.get(f"eval/{task}/loss_tokens"),
            )
        )
    return rows


def _perplexity(nll: float) -> float:
    """exp(nll); inf where it overflows (a diverged run) rather than an error."""
    return math.exp(nll) if nll < 700 else math.inf


def loss_table(eval_metrics: Mapping[str, float], task_names: tuple[str, ...] | None = None) -> str:
    """Plain-text table of `table_rows` (raises if no task has both figures)."""
    rows = table_rows(eval_metrics, task_names)
    if not rows:
        raise ValueError(
            "no task has both eval/<task>/loss and eval/<task>/unigram_loss; evals with the "
            f"tasks data source write both (metrics given: {sorted(eval_metrics)[:12]} ...)"
        )
    lines = [
        f"{'task':<6} {'eval loss':>9} {'ppl':>9} {'unigram':>9} {'ratio':>6} {'accuracy':>8} "
        f"{'tokens':>8}"
    ]
    for r in rows:
        acc = "" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        tok = "" if r["loss_tokens"] is None else f"{int(r['loss_tokens'])}"
        lines.append(
            f"{r['task']:<6} {r['eval_loss']:>9.4f} {r['ppl']:>9.3f} {r['unigram_loss']:>9.4f} "
            f"{r['ratio']:>6.3f} {acc:>8} {tok:>8}"
        )
    return "\n".join(lines)


def last_eval_metrics(workdir: str | os.PathLike) -> tuple[int, dict[str, float]]:
    """(step, {tag: value}) of the newest eval in <workdir>/tensorboard."""
    from gpa_jax.training.metrics import read_scalars

    logdir = os.path.join(os.fspath(workdir), "tensorboard")
    scalars = read_scalars(logdir)
    evals = {k: v for k, v in scalars.items() if k.startswith("eval/")}
    if not evals.get("eval/loss"):
        raise FileNotFoundError(
            f"no eval/loss scalars under {logdir}: train there first (with train.eval_every > 0)"
        )
    step = max(s for s, _ in evals["eval/loss"])
    # A resumed run may log the same step twice; the last write wins.
    return step, {
        k: [v for s, v in series if s == step][-1]
        for k, series in evals.items()
        if any(s == step for s, _ in series)
    }


def run_figures(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """A finished run's figures as one JSON-ready dict (what a sweep's table reads):

        step          the step of the newest eval
        params        the model's parameter count (from the config, `count_params`)
        step_seconds  median seconds per training step over the run's log windows
                      (compilation, evals and checkpoint saves excluded: train/steps_per_s)
        <task>        {loss, ppl}: that eval's loss (nats per output token) and exp(loss)
    """
    from gpa_jax.models import count_params
    from gpa_jax.training.metrics import read_scalars

    step, metrics = last_eval_metrics(workdir)
    rates = read_scalars(os.path.join(os.fspath(workdir), "tensorboard")).get("train/steps_per_s", [])
    out: dict[str, Any] = {
        "step": int(step),
        "params": int(count_params(config)),
        "step_seconds": 1.0 / float(np.median([r for _, r in rates])) if rates else None,
    }
    for task in data_lib.task_names(config):
        loss = metrics.get(f"eval/{task}/loss")
        if loss is not None:
            out[task] = {"loss": float(loss), "ppl": _perplexity(float(loss))}
    return out


def report(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> str:
    """The table for a finished run in `workdir`: its last eval, baselines from the data.

    Baselines are recomputed from the token shards (not read from the logs), so the
    table also covers runs logged before the trainer wrote them.
    """
    step, metrics = last_eval_metrics(workdir)
    data = data_lib.TaskData(config, workdir)
    baselines = data.unigram_baselines()
    for task, b in baselines.items():
        if b.eval_tokens:
            metrics[f"eval/{task}/{UNIGRAM}"] = b.eval_cross_entropy
    lines = [f"step {step}: eval on {config.tasks.eval_split!r}, nats per output token"]
    lines.append(loss_table(metrics, data_lib.task_names(config)))
    lines.append("unigram baselines (train entropy / eval cross-entropy, tokens):")
    for task, b in baselines.items():
        lines.append(
            f"  {task:<4} {b.train_entropy:.4f} / {b.eval_cross_entropy:.4f}  "
            f"({b.train_tokens} train, {b.eval_tokens} eval tokens)"
        )
    return "\n".join(lines)
