"""LM quality over a run: per-task loss, conditioning gain, ASR WER and TTS judge-WER per checkpoint.

    python -m launch.evaluate --workdir=W --curves      # -> W/eval/curves.{md,json,png}

Every LM checkpoint the run kept (the default LM keeps all: `train.keep_checkpoints=0`)
is restored (params only) and scored on the same rows of `split`:
- per task, the teacher-forced loss of the output given its own input (nats per output
  token) and the conditioning gain (loss given another row's input minus that:
  `gpa_jax.evaluation.conditioning`), on `cond_rows` planned rows;
- ASR: corpus WER of the transcripts (the LM config's ASR decoding) of `per_task` source clips;
- TTS: the judge's corpus WER on `per_task` generations (LM -> acoustic stage -> codec
  decoder), a failed generation counting as an empty transcript, next to the judge on the
  recordings of the same sentences.
The codec, acoustic stage and judge are the work dir's final ones for every point, so the
curve moves with the LM only. Points already in curves.json are reused: a resumed run
scores only its new checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from absl import logging

from gpa_jax import paths
from gpa_jax.codec.curves import load_points, write_points
from gpa_jax.evaluation import asr_metrics, conditioning, harness
from gpa_jax.tasks import planning
from gpa_jax.tasks.planning import TGT

CURVE_TASKS = ("asr", "tts", "vc")  # always in the table; SE too for an LM trained with it


def _curve_tasks(points: list[dict[str, Any]]) -> list[str]:
    se = any(p.get("se_gain") is not None for p in points)
    return [*CURVE_TASKS, *(("se",) if se else ())]


def curves_path(workdir: str, ext: str) -> str:
    return os.path.join(workdir, "eval", f"curves.{ext}")


def lm_curves(
    workdir: str,
    *,
    lm_config: Any,
    codec_config: Any,
    judge: Any,
    split: str = "test",
    per_task: int = 16,
    cond_rows: int = 32,
    acoustic_variant: str = "nar",
    seed: int = 0,
    stages_workdir: str | None = None,
) -> list[dict[str, Any]]:
    """Scores every kept LM checkpoint of `workdir` (module doc); writes the curves files.
    Everything but the LM comes from `stages_workdir` (default `workdir`;
    `harness.load_models`)."""
    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.sampling import Request, Sampler
    from gpa_jax.sampling.config import asr_decoding, lm_sampling
    from gpa_jax.tasks.config import resolve_paths
    from gpa_jax.training import checkpoint as ckpt_lib

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    steps = ckpt_lib.saved_steps(lm_dir)
    if not steps:
        raise FileNotFoundError(f"no LM checkpoints in {lm_dir!r}; train the LM first")
    models = harness.load_models(
        workdir, judge=judge, lm_config=lm_config, codec_config=codec_config,
        acoustic_variant=acoustic_variant, speaker_encoder="", stages_workdir=stages_workdir,
    )  # fmt: skip
    codec, vocab = models.codec, models.sampler.vocab
    rate = int(codec.sample_rate)
    stages = stages_workdir or workdir
    token_dir = resolve_paths(lm_config.tasks, stages)[0]
    data = harness.load_split(
        token_dir, vocab, lm_config.tasks.corpus, split, paths.tfds_dir(stages),
        codec.n_q, codec.hop_length, rate, features=harness.reads_features(models.sampler),
        tts_text=models.sampler.tts_text, noisy=not harness.se_skip_reason(models.sampler, token_dir, split),
    )  # fmt: skip
    bank = data.bank
    settings = planning.PlanSettings.from_config(lm_config.tasks, int(lm_config.train.seq_len))
    rng = np.random.default_rng(seed)
    asr_rows = harness._select(
        planning.plan_task("asr", bank, settings, seed, split)[0], per_task, rng
    )
    tts_rows = harness._select(
        planning.plan_task("tts", bank, settings, seed, split)[0], per_task, rng
    )
    tts_texts = [bank.texts[r[TGT]] for r in tts_rows]
    tts_voices = [bank.speakers[r[TGT]] for r in tts_rows]
    crops = [planning.voice_crop(bank, r, models.acoustic.prompt_frames) for r in tts_rows]
    prompts = [data.codes(*crop) for crop in crops]
    prompt_rows = [data.features(*crop) for crop in crops]
    truth = judge.transcribe([data.wav(int(r[TGT])) for r in tts_rows], rate)
    recordings = asr_metrics.judge_wer_report(tts_texts, truth, tts_voices)
    header = {
        "split": split,
        "judge": judge.name,
        "normalizer": recordings["normalizer"],
        "tts_judge_wer_recordings": recordings["corpus_wer"],
        "asr_examples": len(asr_rows),
        "asr_decoding": asr_decoding(lm_sampling(lm_config), float(lm_config.model.ctc_weight) > 0),
        "tts_examples": len(tts_rows),
    }
    done = {p["step"]: p for p in load_points(curves_path(workdir, "json"))}
    points = []
    for step in steps:
        if step in done:
            points.append(done[step])
            continue
        sampler = Sampler.from_checkpoint(lm_dir, vocab, config=lm_config, step=step)
        cond = conditioning.conditioning_report(
            sampler, bank, settings, split=split, num=cond_rows, seed=seed
        )
        point: dict[str, Any] = {"step": step}
        for task in conditioning.TASKS:
            figures = cond.get(task, {})
            point[f"{task}_loss"] = figures.get("nll_matched")
            point[f"{task}_gain"] = figures.get("gain")
        point["asr_wer"] = conditioning.asr_rows_error_rates(sampler, bank, asr_rows)["wer"]
        tts = sampler.generate(
            [
                Request.tts(text, ref, seed=seed + i, reference_features=rows)
                for i, (text, ref, rows) in enumerate(zip(tts_texts, prompts, prompt_rows, strict=True))
            ]
        )
        ok = [
            i for i, res in enumerate(tts) if res.ok and len(res.rvq1) >= harness.MIN_OUTPUT_FRAMES
        ]
        hyps = [""] * len(tts)
        if ok:
            wavs = acoustic_api.synthesize(
                models.acoustic, codec, [tts[i].rvq1 for i in ok], [prompts[i] for i in ok]
            )
            for i, hyp in zip(ok, judge.transcribe(wavs, rate), strict=True):
                hyps[i] = hyp
        point["tts_judge_wer"] = asr_metrics.judge_wer_report(tts_texts, hyps, tts_voices)[
            "corpus_wer"
        ]
        point["tts_failed"] = len(tts) - len(ok)
        logging.info("LM curves: %s", point)
        points.append(point)
        _write(workdir, points, header)
    _write(workdir, points, header)
    return points


def _write(workdir: str, points: list[dict[str, Any]], header: dict[str, Any]) -> None:
    plot = lambda png: _plot(points, header, png)  # noqa: E731
    write_points(curves_path(workdir, "json"), header, points, format_markdown(points, header), plot)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_markdown(points: list[dict[str, Any]], header: dict[str, Any]) -> str:
    lines = [
        "# LM quality per checkpoint",
        "",
        f"Split {header['split']}. Loss: teacher-forced nats per output token given the row's "
        "own input; gain: the loss given another row's input minus that (conditioning). "
        f"ASR: corpus WER of {header['asr_examples']} transcripts "
        f"({header['asr_decoding']}). TTS: judge "
        f"{header['judge']} ({header['normalizer']}) corpus WER on {header['tts_examples']} "
        f"generations; on the recordings of the same sentences it is "
        f"{header['tts_judge_wer_recordings']:.3f}.",
        "",
    ]
    tasks = _curve_tasks(points)
    columns = [f"{t.upper()} {kind}" for kind in ("loss", "gain") for t in tasks]
    columns += ["ASR WER", "TTS judge-WER"]
    lines += ["| step | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for p in points:
        cells = [p.get(f"{t}_{kind}") for kind in ("loss", "gain") for t in tasks]
        cells += [p["asr_wer"], p["tts_judge_wer"]]
        lines.append(f"| {p['step']} | " + " | ".join(_num(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(points: list[dict[str, Any]], header: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, kind, label in ((axes[0], "loss", "loss (nats / output token)"),
                            (axes[1], "gain", "conditioning gain (nats / token)")):  # fmt: skip
        for task in _curve_tasks(points):
            values = [p.get(f"{task}_{kind}") for p in points]
            ax.plot(steps, [np.nan if v is None else v for v in values], marker="o", label=task)
        ax.set_ylabel(label)
    axes[1].axhline(0.1, color="grey", linestyle=":", label="0.1 bar")
    axes[2].plot(steps, [p["asr_wer"] for p in points], marker="o", label="ASR WER")
    axes[2].plot(steps, [p["tts_judge_wer"] for p in points], marker="o", label="TTS judge-WER")
    axes[2].axhline(
        header["tts_judge_wer_recordings"], color="grey", linestyle=":", label="judge on recordings"
    )
    axes[2].set_ylabel("word error rate")
    axes[2].set_ylim(bottom=0)
    for ax in axes:
        ax.set_xlabel("LM step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
