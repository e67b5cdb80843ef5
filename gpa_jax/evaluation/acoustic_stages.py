"""Evaluation of acoustic stages against the codec's bounds (`python -m launch.eval_acoustic`,
`evaluate_stages` for the demo).

For held-out target utterances u (speaker A) of a token split, from u's ground-truth
RVQ-1 codes and a voice prompt, the waveforms compared with u's original audio are

    upper    full codec resynthesis: all n_q ground-truth layers (the best a stage can do)
    lower    RVQ-1-only decode: layers 2..n_q left out (what no acoustic stage gives)
    <stage>  each acoustic stage (NAR, vocoder) from RVQ-1 + a prompt of speaker A: a crop
             of another utterance of A with another text (from `prompt_split`, default
             train: never the target utterance). A NAR stage is scored twice: its default
             expected-latent output ("nar") and its argmax codes ("nar (greedy codes)"),
             see gpa_jax.acoustic.api.NAR_DECODINGS

Metrics:
    mel_distance   mean |log-mel(output) - log-mel(original)| (80 bins, 10 ms hop;
                   lower is better), on the target's frames
    sim_target     speaker similarity (cosine, speaker encoder below) of the output to
                   speaker A's centroid (mean embedding of A's utterances in
                   `speaker_split`, original audio)
    sim_prompt_B   with a prompt from a DIFFERENT speaker B instead: similarity of the
                   output to B's centroid (for upper/lower, which ignore prompts: of their
                   own output); "moving towards B" = sim_prompt_B(stage) > sim_prompt_B(lower)
    sim_source_A   the same outputs' similarity to A's centroid (it should drop)

The speaker encoder is pluggable (`gpa_jax.evaluation.speaker`): 'lda' (default, LDA on
cepstral statistics trained on `speaker_split`'s speaker labels) or 'mfcc' (untrained
baseline); its nearest-centroid speaker-ID accuracy on the originals is reported, so the
similarities can be read against how well the encoder tells these speakers apart.
Acceptance (issue 5): each stage between lower and upper on mel_distance, and
sim_target above lower's. `bounds_informative` is False when the codec's upper and lower
bounds coincide (its decoder ignores layers 2..N): then no comparison means anything.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from gpa_jax import paths
from gpa_jax.acoustic.api import AcousticStage, synthesize
from gpa_jax.acoustic.data import CodeBank, cross_candidates, load_code_bank, reference_candidates
from gpa_jax.codec.evaluate import mel_distance
from gpa_jax.evaluation import speaker as speaker_lib


def load_originals(
    corpus: str, split: str, data_dir: str | None, ids: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    """{id: {audio, speaker}} of a TFDS split (only `ids` when given)."""
    from gpa_jax.corpora import speech_examples

    out = {}
    for ex in speech_examples(corpus, split, data_dir=data_dir):
        if ids is None or ex["id"] in ids:
            out[ex["id"]] = {"audio": ex["audio"], "speaker": ex["speaker"]}
    return out


def pick_examples(
    bank: CodeBank,
    prompt_bank: CodeBank,
    num: int,
    prompt_frames: int,
    max_target_frames: int,
    seed: int,
) -> list[dict[str, Any]]:
    """Targets (seeded choice) with a same-speaker and an other-speaker prompt crop."""
    rng = np.random.default_rng(seed)
    same_bank = bank is prompt_bank
    cands = (
        reference_candidates(bank, prompt_frames // 2)
        if same_bank
        else cross_candidates(bank, prompt_bank, prompt_frames // 2)
    )
    usable = [u for u in range(len(bank.ids)) if len(cands[u])]
    order = rng.permutation(usable)[:num]
    picks = []
    for u in order.tolist():
        spk = bank.speakers[u]
        others = [r for r in range(len(prompt_bank.ids)) if prompt_bank.speakers[r] != spk]
        if not others:
            continue
        same = int(cands[u][rng.integers(len(cands[u]))])
        other = int(others[rng.integers(len(others))])
        t = int(min(bank.frames[u], max_target_frames))
        picks.append(
            {
                "id": bank.ids[u],
                "speaker": spk,
                "codes": bank.utterance_codes(u)[:, :t],
                "prompt_same": prompt_bank.utterance_codes(same)[:, :prompt_frames],
                "prompt_same_id": prompt_bank.ids[same],
                "prompt_other": prompt_bank.utterance_codes(other)[:, :prompt_frames],
                "prompt_other_id": prompt_bank.ids[other],
                "other_speaker": prompt_bank.speakers[other],
            }
        )
    if not picks:
        raise ValueError("no target utterance has a usable same-speaker prompt")
    return picks


def evaluate(
    stages: Mapping[str, AcousticStage],
    codec,
    examples: Sequence[dict[str, Any]],
    originals: Mapping[str, np.ndarray],
    encoder: speaker_lib.SpeakerEncoder,
    centroid_table: Mapping[str, np.ndarray],
    *,
    batch_size: int = 8,
    sample_dir: str | None = None,
    num_samples: int = 3,
) -> dict[str, Any]:
    """Per-system mean metrics (module docstring) over `examples`."""
    from gpa_jax.codec import api as codec_api

    hop = codec.hop_length
    refs = []
    for ex in examples:
        wav = np.asarray(originals[ex["id"]], np.float32)
        refs.append(wav[: ex["codes"].shape[1] * hop])
    rvq1 = [ex["codes"][0] for ex in examples]
    outputs: dict[str, dict[str, list[np.ndarray]]] = {}
    upper = codec_api.decode_batch(codec, [ex["codes"] for ex in examples])
    lower = codec_api.decode_batch(codec, [ex["codes"][:1] for ex in examples])
    outputs["upper (full codec)"] = {"same": upper, "other": upper}
    outputs["lower (RVQ-1 only)"] = {"same": lower, "other": lower}
    for name, stage in stages.items():
        same, other = [], []
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            same += synthesize(
                stage, codec, rvq1[i : i + batch_size], [e["prompt_same"] for e in chunk]
            )
            other += synthesize(
                stage, codec, rvq1[i : i + batch_size], [e["prompt_other"] for e in chunk]
            )
        outputs[name] = {"same": same, "other": other}

    a_cent = np.stack([centroid_table[ex["speaker"]] for ex in examples])
    b_cent = np.stack([centroid_table[ex["other_speaker"]] for ex in examples])
    rows = {}
    for name, out in outputs.items():
        emb_same = encoder.embed(out["same"])
        emb_other = encoder.embed(out["other"])
        mel = [mel_distance(r, o) for r, o in zip(refs, out["same"], strict=True)]
        rows[name] = {
            "mel_distance": float(np.mean(mel)),
            "sim_target": float(np.mean(speaker_lib.cosine(emb_same, a_cent))),
            "sim_prompt_B": float(np.mean(speaker_lib.cosine(emb_other, b_cent))),
            "sim_source_A": float(np.mean(speaker_lib.cosine(emb_other, a_cent))),
        }
    orig_emb = encoder.embed(refs)
    rows["original"] = {
        "mel_distance": 0.0,
        "sim_target": float(np.mean(speaker_lib.cosine(orig_emb, a_cent))),
        "sim_prompt_B": None,  # no prompt: not applicable (None keeps the JSON strict)
        "sim_source_A": None,
    }
    if sample_dir:
        from gpa_jax.audio.io import save_wav

        paths.makedirs(sample_dir)
        for i, ex in enumerate(examples[:num_samples]):
            save_wav(
                os.path.join(sample_dir, f"{ex['id']}_original.wav"), refs[i], codec.sample_rate
            )
            for name, out in outputs.items():
                # "nar (greedy codes)" -> "nar-greedy", "upper (full codec)" -> "upper"
                head, _, detail = name.partition(" (")
                tag = (
                    head
                    if head in ("upper", "lower") or not detail
                    else f"{head}-{detail.split()[0]}"
                )
                save_wav(
                    os.path.join(sample_dir, f"{ex['id']}_{tag}.wav"),
                    out["same"][i],
                    codec.sample_rate,
                )
                if name in stages:
                    save_wav(
                        os.path.join(
                            sample_dir, f"{ex['id']}_{tag}_prompt-{ex['other_speaker']}.wav"
                        ),
                        out["other"][i],
                        codec.sample_rate,
                    )
    checks = {}
    up, lo = rows["upper (full codec)"], rows["lower (RVQ-1 only)"]
    for name in stages:
        r = rows[name]
        checks[name] = {
            "mel_between_bounds": bool(
                up["mel_distance"] <= r["mel_distance"] <= lo["mel_distance"]
            ),
            "mel_better_than_lower": bool(r["mel_distance"] < lo["mel_distance"]),
            "sim_above_lower": bool(r["sim_target"] > lo["sim_target"]),
            "moves_towards_prompt_speaker": bool(r["sim_prompt_B"] > lo["sim_prompt_B"]),
        }
    # With a codec whose decoder ignores layers 2..N (e.g. trained for too few steps) the
    # bounds coincide and every comparison above is noise: say so.
    gap = lo["mel_distance"] - up["mel_distance"]
    informative = bool(gap > 0.01 * max(lo["mel_distance"], 1e-8))
    if not informative:
        logging.warning(
            "upper and lower bounds coincide (mel %.4f vs %.4f): the codec does not use "
            "RVQ layers 2..N, so the stage comparisons are not informative",
            up["mel_distance"],
            lo["mel_distance"],
        )
    return {
        "num_utterances": len(examples),
        "systems": rows,
        "checks": checks,
        "bounds_gap": float(gap),
        "bounds_informative": informative,
    }


def format_table(result: Mapping[str, Any]) -> str:
    cols = ("mel_distance", "sim_target", "sim_prompt_B", "sim_source_A")
    lines = ["| system | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in result["systems"].items():
        cells = ("-" if row[c] is None else f"{row[c]:.4f}" for c in cols)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(
    stage_specs: Mapping[str, tuple[Any, str]],
    *,
    split: str = "test",
    prompt_split: str = "train",
    speaker_split: str = "train",
    data_dir: str | None = None,
    num_utterances: int = 24,
    speaker_encoder: str = "lda",
    speaker_utts_per_speaker: int = 20,
    seed: int = 0,
    out_dir: str | None = None,
) -> dict[str, Any]:
    """Loads stages {name: (config, workdir)}, the codec and the data; evaluates; writes
    results.json / results.md (+ a few wavs) under out_dir."""
    from gpa_jax.acoustic.kind import load_codec

    if not stage_specs:
        raise ValueError("no acoustic stage to evaluate: give a NAR and/or a vocoder workdir")
    first = next(iter(stage_specs.values()))[0]
    token_dir = first.data.token_dir
    for name, (cfg, _) in stage_specs.items():
        if cfg.data.token_dir != token_dir:
            raise ValueError(f"stage {name}: token_dir {cfg.data.token_dir} != {token_dir}")
    codec, codec_step = load_codec(first)
    stages = {}
    for name, (cfg, wd) in stage_specs.items():
        stages[name] = AcousticStage.from_workdir(cfg, wd)
        if stages[name].variant == "nar":  # the ablation: USLM's argmax codes, same model
            stages[f"{name} (greedy codes)"] = AcousticStage(
                stages[name].model, prompt_frames=stages[name].prompt_frames,
                chunk_frames=stages[name].chunk_frames, nar_decoding="greedy",
            )  # fmt: skip
    # Rows as long as in training (positions the model has seen), prompt included.
    max_len = min(int(cfg.train.seq_len) for cfg, _ in stage_specs.values())
    prompt_frames = int(first.data.prompt_max_frames)
    bank = load_code_bank(token_dir, split)
    prompt_bank = bank if prompt_split == split else load_code_bank(token_dir, prompt_split)
    examples = pick_examples(
        bank, prompt_bank, num_utterances, prompt_frames, max_len - prompt_frames, seed
    )
    corpus = bank.manifest.get("metadata", {}).get("corpus")
    if not corpus:
        raise ValueError(f"{token_dir}/manifest.json names no corpus (metadata.corpus)")
    logging.info("loading original audio of %d %s utterances of %s", len(examples), split, corpus)
    originals = load_originals(corpus, split, data_dir, {ex["id"] for ex in examples})
    missing = [ex["id"] for ex in examples if ex["id"] not in originals]
    if missing:
        raise KeyError(f"{corpus}/{split} lacks the token shards' utterances {missing[:5]}")
    # Speaker encoder + centroids from the speaker split's original audio.
    spk_audio = load_originals(corpus, speaker_split, data_dir)
    per_speaker: dict[str, list[np.ndarray]] = {}
    for utt_id in sorted(spk_audio):
        item = spk_audio[utt_id]
        per_speaker.setdefault(item["speaker"], [])
        if len(per_speaker[item["speaker"]]) < speaker_utts_per_speaker:
            per_speaker[item["speaker"]].append(item["audio"])
    wavs = [w for s in sorted(per_speaker) for w in per_speaker[s]]
    labels = [s for s in sorted(per_speaker) for _ in per_speaker[s]]
    encoder = speaker_lib.make_speaker_encoder(speaker_encoder, wavs=wavs, speakers=labels)
    table = speaker_lib.centroids(encoder, wavs, labels)
    needed = {ex["speaker"] for ex in examples} | {ex["other_speaker"] for ex in examples}
    if needed - set(table):
        raise ValueError(f"speakers {sorted(needed - set(table))} have no {speaker_split} audio")
    result = evaluate(
        stages,
        codec,
        examples,
        {k: v["audio"] for k, v in originals.items()},
        encoder,
        table,
        sample_dir=os.path.join(out_dir, "samples") if out_dir else None,
    )
    result["speaker_encoder"] = speaker_encoder
    result["speaker_id_accuracy"] = speaker_lib.speaker_id_accuracy(
        encoder,
        table,
        [originals[ex["id"]]["audio"] for ex in examples],
        [ex["speaker"] for ex in examples],
    )
    result.update(
        split=split, prompt_split=prompt_split, token_dir=token_dir, codec_step=codec_step,
        stages={name: wd for name, (_, wd) in stage_specs.items()},
        examples=[{k: ex[k] for k in ("id", "speaker", "prompt_same_id", "prompt_other_id",
                                      "other_speaker")} for ex in examples],
    )  # fmt: skip
    if out_dir:
        paths.makedirs(out_dir)
        # Whole or absent (gpa_jax.paths): a killed evaluation never looks finished.
        paths.atomic_write_text(os.path.join(out_dir, "results.md"), format_table(result) + "\n")
        paths.atomic_write_json(
            os.path.join(out_dir, "results.json"), result, indent=1, sort_keys=True
        )
    return result


def evaluate_stages(
    token_dir: str,
    workdirs: Mapping[str, str],
    *,
    out_dir: str | None = None,
    data_dir: str | None = None,
    config_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    **run_kwargs: Any,
) -> dict[str, Any]:
    """Evaluates the stages {variant: workdir} of `token_dir` (`run`), each with
    `recipe.stage_config(variant, token_dir, **config_kwargs[variant])`."""
    from gpa_jax.acoustic import recipe

    config_kwargs = config_kwargs or {}
    specs = {
        variant: (recipe.stage_config(variant, token_dir, **config_kwargs.get(variant, {})), wd)
        for variant, wd in workdirs.items()
    }
    return run(specs, out_dir=out_dir, data_dir=data_dir, **run_kwargs)
