"""Build the synthetic corpus and describe what was stored (used by the launcher).

Hours come from the stored `duration_s` feature, which is len(audio) / 16000 of the
stored (trimmed) audio, so summaries need not decode the audio itself.
"""

from __future__ import annotations

import os

import tensorflow_datasets as tfds

from data.synthetic_speech.synthetic_speech_dataset_builder import Builder


def build(
    config_name: str, data_dir: str | os.PathLike, num_workers: int | None = None
) -> tfds.core.DatasetBuilder:
    """Generates synthetic_speech/<config_name> under data_dir (no-op if already there)."""
    builder = Builder(config=config_name, data_dir=os.fspath(data_dir), num_workers=num_workers)
    builder.download_and_prepare()
    return builder


def summarize(builder: tfds.core.DatasetBuilder) -> dict[str, dict[str, object]]:
    """Per split: utterances, sentences, hours, mean/min/max seconds, voices and their ids."""
    decoders = tfds.decode.PartialDecoding(
        {"duration_s": True, "speaker": True, "sentence_id": True}
    )
    summary: dict[str, dict[str, object]] = {}
    for split in builder.info.splits:
        ds = builder.as_dataset(split=split, decoders=decoders, shuffle_files=False)
        seconds, utterances = 0.0, 0
        shortest, longest = float("inf"), 0.0
        speakers: set[str] = set()
        sentences: set[int] = set()
        for batch in tfds.as_numpy(ds.batch(4096)):
            seconds += float(batch["duration_s"].astype("float64").sum())
            utterances += len(batch["duration_s"])
            shortest = min(shortest, float(batch["duration_s"].min()))
            longest = max(longest, float(batch["duration_s"].max()))
            speakers.update(s.decode() for s in batch["speaker"])
            sentences.update(int(i) for i in batch["sentence_id"])
        summary[split] = {
            "utterances": utterances,
            "sentences": len(sentences),
            "hours": seconds / 3600.0,
            "mean_seconds": seconds / max(1, utterances),
            "min_seconds": shortest if utterances else 0.0,
            "max_seconds": longest,
            "voices": len(speakers),
            "speakers": sorted(speakers),
        }
    return summary


def format_summary(summary: dict[str, dict[str, object]]) -> str:
    """A plain-text table of `summarize`'s result, with a total row and voice lists."""
    header = (
        f"{'split':<18} {'utts':>7} {'sents':>6} {'hours':>7} {'mean s':>7} {'min s':>6} "
        f"{'max s':>6} {'voices':>6}"
    )
    lines = [header, "-" * len(header)]
    total_utts = total_hours = 0.0
    for split, row in summary.items():
        lines.append(
            f"{split:<18} {row['utterances']:>7} {row['sentences']:>6} {row['hours']:>7.3f} "
            f"{row['mean_seconds']:>7.2f} {row['min_seconds']:>6.2f} {row['max_seconds']:>6.2f} "
            f"{row['voices']:>6}"
        )
        total_utts += row["utterances"]
        total_hours += row["hours"]
    lines.append("-" * len(header))
    lines.append(f"{'total':<18} {int(total_utts):>7} {'':>6} {total_hours:>7.3f}")
    for split, row in summary.items():
        lines.append(f"{split} voices: {', '.join(row['speakers'])}")
    return "\n".join(lines)
