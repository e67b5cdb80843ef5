"""Where evaluation output goes, so that anyone can listen to it and re-score it.

    <workdir>/samples/<task>/<name>.wav        every generated waveform
    <workdir>/samples/<task>/manifest.jsonl    one JSON line per wav: its file name, reference
                                               text, reference / source wav file names (in
                                               the same folder), speaker ids, the judge's
                                               transcript
    <workdir>/eval/results.json                all figures, machine-readable
    <workdir>/eval/results.md                  the same as Markdown tables
    <workdir>/eval/tensorboard/                the figures as scalars eval/<task>/<name>, a
                                               few generated wavs as audio and the judge's /
                                               ASR transcripts as text, at the LM's step

A new evaluation run of a task replaces that task's samples (stale wavs of an older run
are removed with their manifest), so a manifest always describes exactly its folder.
The manifest grows one line per sample, each written (and flushed) right after its wav,
so an evaluation killed half-way leaves a line for every finished sample; a reader skips
a torn last line with a warning. On gs:// (objects cannot be appended to) the manifest is
rewritten whole after each sample, with the same guarantee.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from gpa_jax import paths
from gpa_jax.audio import io as audio_io


class SampleStore:
    """Writes one task's generated wavs and their manifest lines."""

    def __init__(self, workdir: str, task: str, sample_rate: int, folder: str = "samples"):
        self.root = os.path.join(workdir, folder, task)
        self.sample_rate = int(sample_rate)
        paths.rmtree(self.root)
        paths.makedirs(self.root)
        self.manifest_path = os.path.join(self.root, "manifest.jsonl")
        self._names: set[str] = set()
        self._lines: list[str] = []  # the manifest so far (rewritten whole on gs://)
        self.count = 0  # samples (wav + manifest line) written

    def add(self, name: str, wav: np.ndarray, **meta: Any) -> str:
        """Saves `wav` as <name>.wav, appends its manifest line; returns the wav path."""
        if name in self._names or os.sep in name:
            raise ValueError(f"sample name {name!r} is repeated or contains a path separator")
        self._names.add(name)
        path = os.path.join(self.root, f"{name}.wav")
        audio_io.save_wav(path, np.asarray(wav, np.float32), self.sample_rate)
        line = {"wav": os.path.basename(path), "sample_rate": self.sample_rate, **meta}
        self._lines.append(json.dumps(line, sort_keys=True) + "\n")
        # Appended and closed (flushed) per sample, after its wav: a killed run keeps the
        # lines of the samples it finished, and never a line without its wav.
        if paths.is_remote(self.manifest_path):
            paths.atomic_write_text(self.manifest_path, "".join(self._lines))
        else:
            with open(self.manifest_path, "a") as f:
                f.write(self._lines[-1])
        self.count += 1
        return path


def read_manifest(path: str) -> list[dict[str, Any]]:
    """The manifest's lines as dicts, with 'wav' and every '*_wav' made absolute paths.

    A last line cut short (the writer was killed in the middle of it) is skipped with a
    warning; a bad line anywhere else is an error.
    """
    root = os.path.dirname(path if paths.is_remote(path) else os.path.abspath(path))
    rows = []
    lines = paths.read_text(path).splitlines(keepends=True)
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines) and not line.endswith("\n"):
                logging.warning(
                    "%s:%d: skipped a torn last line (its writer was stopped while writing it): %r",
                    path,
                    number,
                    line[:80],
                )
                break
            raise ValueError(f"{path}:{number}: not a JSON line ({error})") from None
        for key in [k for k in row if k == "wav" or k.endswith("_wav")]:
            if row[key]:
                row[key] = os.path.join(root, row[key])
        rows.append(row)
    return rows


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table; floats with 3 decimals, missing cells blank."""

    def cell(value: Any) -> str:
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    workdir: str, results: Mapping[str, Any], sections: Mapping[str, str]
) -> tuple[str, str]:
    """Writes results.json (`results`) and results.md (`sections`: title -> Markdown)."""
    out = os.path.join(workdir, "eval")
    paths.makedirs(out)
    json_path = os.path.join(out, "results.json")
    md_path = os.path.join(out, "results.md")
    # Atomic (gpa_jax.paths): an interrupted evaluation never leaves a results file behind
    # that looks complete. The Markdown goes first, results.json (what tools read) last.
    md = "# Evaluation results\n" + "".join(f"\n## {t}\n\n{b}\n" for t, b in sections.items())
    paths.atomic_write_text(md_path, md)
    paths.atomic_write_json(json_path, results, indent=2, sort_keys=True, default=float)
    return json_path, md_path


def scalar_figures(results: Mapping[str, Any]) -> dict[str, float]:
    """Every number of the per-task figures as {"<task>/<name>": value} (nested dicts
    one level down become <task>/<key>/<name>); booleans and strings are left out."""
    out: dict[str, float] = {}

    def add(prefix: str, figures: Mapping[str, Any]) -> None:
        for key, value in figures.items():
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float | np.floating | np.integer):
                if np.isfinite(value):
                    out[f"{prefix}/{key}"] = float(value)
            elif isinstance(value, Mapping) and prefix.count("/") == 0:
                add(f"{prefix}/{key}", value)

    for task, figures in results.items():
        if isinstance(figures, Mapping):
            add(task, figures)
    return out


def write_tensorboard(
    workdir: str, step: int, results: Mapping[str, Any], *, tasks: Sequence[str],
    num_audio: int = 3,
) -> str:  # fmt: skip
    """Writes `results`' figures, the first `num_audio` generated wavs per task and their
    transcripts under <workdir>/eval/tensorboard at `step`; returns the log dir."""
    from gpa_jax.training.metrics import create_default_writer

    logdir = os.path.join(workdir, "eval", "tensorboard")
    writer = create_default_writer(logdir)
    writer.write_scalars(step, {f"eval/{k}": v for k, v in scalar_figures(results).items()})
    for task in tasks:
        manifest = os.path.join(workdir, "samples", task, "manifest.jsonl")
        if not paths.isfile(manifest):
            continue
        rows = [r for r in read_manifest(manifest) if r.get("role", "generated") == "generated"]
        texts = {}
        for i, row in enumerate(rows[:num_audio]):
            said = row.get("hypothesis") or row.get("judge_hypothesis") or ""
            texts[f"eval/{task}/{i}"] = f"reference: {row.get('text', '')}\n\nheard: {said}"
            if task != "asr" and paths.isfile(row["wav"]):
                wav = audio_io.load_audio(row["wav"], int(row["sample_rate"]))
                writer.write_audios(step, {f"eval/{task}/{i}": wav[None, :, None]},
                                    sample_rate=int(row["sample_rate"]))  # fmt: skip
        if texts:
            writer.write_texts(step, texts)
    writer.flush()
    writer.close()
    return logdir
