"""Codec quality over a run: the judge's WER of the resynthesis and the RVQ-1 probe per checkpoint.

    python -m launch.eval_codec --workdir=W --curves      # -> W/codec/curves.{md,json,png}

Every checkpoint the codec run kept (`train.keep_checkpoints`: 0 keeps all) is restored
and scored on the first `curves.per_voice` utterances of every voice of `eval.split`:
the judge's corpus WER (and mean per-utterance WER) on the full-RVQ and the RVQ-1-only
resynthesis, next to the same judge on the recordings, and the CER of the RVQ-1 content
probe (`probe.py`, the probe's configured size and steps). So the budget / quality trade
of the codec stage is visible: how much each further thousand steps buys. Points already
in curves.json are reused, so a resumed run scores only its new checkpoints.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging

from gpa_jax import paths
from gpa_jax.codec import evaluate as codec_eval


def curves_path(workdir: str, ext: str) -> str:
    return os.path.join(workdir, "codec", f"curves.{ext}")


def codec_curves(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    judge: Any,
    judge_report: codec_eval.JudgeReport,
    data_dir: str | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Scores every kept codec checkpoint of <workdir> (module doc); writes the curves files."""
    from gpa_jax import paths
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import probe
    from gpa_jax.codec import train as codec_train

    data_dir = data_dir or paths.tfds_dir(workdir)
    directory = codec_train.checkpoint_dir(workdir)
    manager = codec_train.checkpoint_manager(directory)
    steps = sorted(int(s) for s in manager.all_steps())
    manager.close()
    if not steps:
        raise FileNotFoundError(f"no codec checkpoints in {directory!r}; train the codec first")
    sr = int(config.codec.sample_rate)
    load = dict(data_dir=data_dir, sample_rate=sr, max_seconds=float(config.data.max_seconds))
    clips = codec_data.load_clips(
        config.data.corpus, config.eval.split, per_speaker=int(config.curves.per_voice), **load
    )
    pc = config.probe
    probe_train = codec_data.load_clips(
        config.data.corpus, config.data.split, limit=int(pc.train_utterances), **load
    )
    probe_test = codec_data.load_clips(
        config.data.corpus, pc.split, limit=int(pc.test_utterances), **load
    )
    done = {p["step"]: p for p in load_points(curves_path(workdir, "json"))}
    recordings = judge_report(clips.texts, judge.transcribe(list(clips.audio), sr), clips.speakers)
    header = {"judge": judge.name, "normalizer": recordings["normalizer"]}
    points = []
    for step in steps:
        if step in done:
            points.append(done[step])
            continue
        codec, _ = codec_train.restore_codec(config, directory, step)
        recon = codec_eval.resynthesize(codec, clips.audio, progress=progress)
        point: dict[str, Any] = {"step": step, "utterances": len(clips.audio)}
        point["recordings"] = recordings["corpus_wer"]
        for name, wavs in recon.items():
            report = judge_report(clips.texts, judge.transcribe(wavs, sr), clips.speakers)
            point[name] = report["corpus_wer"]
            point[f"{name}_mean_utterance"] = report["mean_utterance_wer"]
        probed = probe.probe_configured(
            config,
            codec,
            (probe_train.audio, probe_train.texts),
            (probe_test.audio, probe_test.texts),
            layers=[1],
            progress=progress,
        )
        point["probe_rvq1_cer"] = probed["layers"]["rvq1"]["cer"]
        logging.info("codec curves: %s", point)
        points.append(point)
        _write(workdir, points, header)
    _write(workdir, points, header)
    return points


def load_points(json_path: str) -> list[dict[str, Any]]:
    """The points of a curves.json (codec or LM), [] if there is none yet."""
    if not paths.isfile(json_path):
        return []
    return paths.read_json(json_path)["points"]


def write_points(json_path: str, header: dict[str, Any], points: list[dict[str, Any]],
                 markdown: str, plot) -> None:  # fmt: skip
    """curves.json / .md / .png side by side; json and md whole or absent (gpa_jax.paths),
    so a killed run never leaves a half table. plot(png_path) draws the figure."""
    paths.makedirs(os.path.dirname(json_path))
    stem = os.path.splitext(json_path)[0]
    paths.atomic_write_json(json_path, {**header, "points": points}, indent=1)
    paths.atomic_write_text(f"{stem}.md", markdown)
    with paths.local_output(f"{stem}.png") as png:  # matplotlib writes local files
        plot(png)


def _write(workdir: str, points: list[dict[str, Any]], header: dict[str, str]) -> None:
    markdown = format_markdown(points, header["judge"], header["normalizer"])
    write_points(curves_path(workdir, "json"), header, points, markdown, lambda png: _plot(points, png))


def format_markdown(points: list[dict[str, Any]], judge_name: str, normaliser: str) -> str:
    lines = [
        "# Codec quality per checkpoint",
        "",
        f"Judge: {judge_name}, normaliser {normaliser}; corpus WER on "
        f"{points[0]['utterances'] if points else 0} utterances of the evaluation split "
        "(every voice alike); RVQ-1 probe CER with the probe's configured size and steps.",
        "",
        "| step | WER full RVQ | WER RVQ-1 only | WER recordings | probe CER RVQ-1 |",
        "|---|---|---|---|---|",
    ]
    for p in points:
        lines.append(
            f"| {p['step']} | {p['full_rvq']:.3f} | {p['rvq1_only']:.3f} | "
            f"{p['recordings']:.3f} | {p['probe_rvq1_cer']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def _plot(points: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [p["step"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("full_rvq", "judge WER, full RVQ"),
        ("rvq1_only", "judge WER, RVQ-1 only"),
        ("recordings", "judge WER, recordings"),
        ("probe_rvq1_cer", "probe CER, RVQ-1"),
    ):
        ax.plot(steps, [p[key] for p in points], marker="o", label=label)
    ax.set_xlabel("codec step")
    ax.set_ylabel("error rate")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
