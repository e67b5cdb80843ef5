"""Runs every task on a split and turns the generations into the evaluation table.

    models = EvalModels(codec=codec, sampler=sampler, acoustic=stage, judge=judge,
                        speaker=speaker_encoder)
    results = evaluate_tasks(models, token_dir=..., corpus=..., data_dir=..., split="test",
                             workdir=W, settings=PlanSettings(...), seed=0, max_per_task=40)

Which examples: the split's token shards are planned with the training tasks' own rules
(`gpa_jax.tasks.planning.plan_task`: TTS references are other utterances of the target's
speaker with another text; VC sources are the same sentence by another speaker), then
`max_per_task` rows are drawn with the seed. On the synthetic corpus's `test` split that
is unseen sentences spoken by seen voices.

What is measured:
- ASR: source RVQ-1 codes -> LM (decoded as the LM config's sampling.asr says: greedy, or
  the joint CTC/attention search) -> text; WER / CER against the transcript.
- TTS: text + reference clip -> LM RVQ-1 -> acoustic stage (the reference's codes as the
  voice prompt) -> codec decoder -> wav. Judge WER on it, next to the judge's WER on the
  ground-truth recording of the same sentence by the same speaker; speaker similarity of
  the output to the reference clip, and (mean) to reference clips of the other speakers in
  the evaluated set. Next to it, two ceilings: the judge's WER on the codec's resynthesis
  of the target (all RVQ layers) and on the target's own RVQ-1 codes through the same
  acoustic stage and decoder (the figure a perfect LM would get).
- TTS on open text (`open_text`, the headline split only): sentences outside the corpus
  grammar, with the split's reference clips; judge WER next to the judge's WER on the same
  sentences spoken by the reference speaker's voice engine, and the share of unseen words.
- VC: source utterance (speaker A) + reference clip of speaker B -> wav; judge WER; speaker
  similarity to the reference (B) and to the source (A).
- SE (only for an LM trained with it, tasks.rates.se > 0, on shards with noisy inputs;
  else skipped, said in the results): the noisy input's RVQ-1 (its rows for a
  continuous / hybrid LM) -> LM RVQ-1 -> acoustic stage (the noisy input's codes as the
  voice prompt, as `launch.sample` does) -> wav. Judge WER, STOI and mel distance
  (`gpa_jax.codec.evaluate`) against the clean recording, next to the same figures of
  the noisy input itself, rebuilt from the recordings (`gpa_jax.audio.noise` with the
  manifest's settings and babble ids; its SNR is checked against the stored one).
Judge WERs follow `asr_metrics.judge_wer_report` (Whisper's English normaliser, as
seed-tts-eval): `judge_wer*` are corpus WERs, `judge_wer*_mean_utt` the means of
per-utterance WERs, and `judge_wer_by_voice` gives both per voice of the output.
Every generated wav lands in <workdir>/samples/<task>/ with a manifest line (see
`gpa_jax.evaluation.results`); the reference / source clips are written next to them, so
a manifest never points into a cache that may vanish.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging
from tqdm.auto import tqdm

from gpa_jax import preemption
from gpa_jax.evaluation import asr_metrics, conditioning
from gpa_jax.evaluation import open_text as open_text_lib
from gpa_jax.evaluation.judge import Judge
from gpa_jax.evaluation.results import SampleStore, markdown_table
from gpa_jax.evaluation.speaker import SAMPLE_RATE as SPEAKER_RATE
from gpa_jax.evaluation.speaker import SpeakerEncoder, cosine
from gpa_jax.tasks import planning
from gpa_jax.tasks.planning import REF, SRC, TGT

TASKS = ("asr", "tts", "vc", "se")
# Outputs shorter than this (0.1 s at 50 Hz) count as failed: nothing to judge or embed.
MIN_OUTPUT_FRAMES = 5


@dataclasses.dataclass
class EvalModels:
    codec: Any  # gpa_jax.codec.model.Codec
    sampler: Any  # gpa_jax.sampling.Sampler (no acoustic hook needed)
    acoustic: Any  # gpa_jax.acoustic.api.AcousticStage
    judge: Judge | None
    speaker: SpeakerEncoder | None = None
    speaker_name: str = ""


def _select(plan: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if n and len(plan) > n:
        plan = plan[np.sort(rng.choice(len(plan), n, replace=False))]
    return plan


class SplitData:
    """Codes (all layers) and recordings of the evaluated split, by bank index."""

    def __init__(self, bank: planning.Bank, audio: dict[str, np.ndarray], hop: int):
        self.bank, self.audio, self.hop = bank, audio, hop

    def codes(self, u: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        return self.bank.utterance_codes(u, start, frames)

    def features(self, u: int, start: int = 0, frames: int | None = None) -> np.ndarray | None:
        """Token-aligned log-mel rows (continuous-input models), None when not loaded."""
        return self.bank.utterance_features(u, start, frames)

    def wav(self, u: int, start: int = 0, frames: int | None = None) -> np.ndarray:
        wav = self.audio[self.bank.ids[u]]
        end = None if frames is None else (start + frames) * self.hop
        return wav[start * self.hop : end]


def load_split(
    token_dir, vocab, corpus, split, data_dir, n_q, hop, sample_rate, *, features: bool = False,
    tts_text: str = "transcript", noisy: bool = False,
) -> SplitData:
    """The split's bank (all `n_q` layers; with `features`, the token-aligned log-mel rows
    a continuous-input LM reads; TTS prompts spelled by `tts_text`; with `noisy`, the SE
    noisy inputs) and its recordings."""
    from gpa_jax.codec import data as codec_data

    bank = planning.load_bank(token_dir, split, vocab, layers=n_q, features=features,
                              tts_text=tts_text, noisy=noisy)
    clips = codec_data.load_clips(corpus, split, data_dir=data_dir, sample_rate=sample_rate)
    audio = dict(zip(clips.ids, clips.audio, strict=True))
    missing = [i for i in bank.ids if i not in audio]
    if missing:
        raise ValueError(
            f"{corpus}/{split}: {len(missing)} utterances of the token shards in {token_dir} "
            f"have no readable recording (e.g. {missing[:3]}); re-tokenize the corpus"
        )
    return SplitData(bank, audio, hop)


def reads_features(sampler) -> bool:
    """Whether the sampler's LM reads feature rows at its audio inputs (not codec tokens)."""
    return sampler.cfg.audio_input != "tokens"


def feature_kind(lm_config, workdir: str | None) -> str:
    """The kind of feature rows (`gpa_jax.codec.tokenization.TOKEN_FEATURES`) in the token shards
    the LM trained on: what a continuous-input LM must be fed at sampling time."""
    from gpa_jax.tasks import token_shards
    from gpa_jax.tasks.config import resolve_paths

    token_dir = resolve_paths(lm_config.tasks, workdir)[0]
    split = lm_config.tasks.train_split
    entry = token_shards.read_manifest(token_dir)["splits"].get(split, {})
    if not entry.get("features"):
        raise ValueError(
            f"split {split!r} of {token_dir} has no feature rows: this LM reads continuous "
            "audio input; tokenize with data.token_features set (launch.tokenize --token_features)"
        )
    return str(entry["features"]["kind"])


def _generate(models: EvalModels, requests, task: str) -> list:
    results = models.sampler.generate(requests)
    failed = [(r.id, r.error) for r in results if not r.ok]
    if failed:
        logging.warning("%s: %d requests failed, e.g. %s", task, len(failed), failed[:3])
    return results


def evaluate_tasks(
    models: EvalModels,
    *,
    token_dir: str,
    corpus: str,
    data_dir: str,
    split: str,
    workdir: str,
    settings: planning.PlanSettings,
    seed: int = 0,
    max_per_task: int = 40,
    tasks: Sequence[str] = TASKS,
    progress: bool = True,
    samples_folder: str = "samples",
    clear_results: bool = True,
    open_text: int = 0,
    train_split: str = "train",
) -> dict[str, Any]:
    """Runs `tasks` on `split`; returns {task: figures, "conditioning": report} and writes
    the samples under <workdir>/<samples_folder>/<task> (module doc). open_text > 0 adds
    "tts_open": TTS of that many sentences outside the corpus grammar
    (`gpa_jax.evaluation.open_text`), with words unseen in `train_split`'s transcripts.

    SIGTERM / SIGINT stop it at once (`gpa_jax.preemption.Preempted`, exit 143 / 130) with
    a message naming the tasks whose samples are complete; eval/results.{json,md} of an
    earlier evaluation are removed first (they describe samples this run replaces), so a
    stopped evaluation never leaves a results file behind.
    """
    samples = os.path.join(workdir, samples_folder)
    finished: dict[str, int] = {}  # task -> samples written, once all of them are

    def kept() -> str:  # said when the signal comes
        done = ", ".join(f"{t} ({n} samples)" for t, n in finished.items()) or "none"
        return (
            f"the finished tasks' samples are kept in {samples} ({done}); no results were "
            "written (eval/results.json appears only when every task is done); rerun the "
            "same command to evaluate again"
        )

    for name in ("results.json", "results.md") if clear_results else ():
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(workdir, "eval", name))
    with preemption.watch("evaluation", immediate=True, note=kept):
        return _evaluate_tasks(
            models, token_dir=token_dir, corpus=corpus, data_dir=data_dir, split=split,
            workdir=workdir, settings=settings, seed=seed, max_per_task=max_per_task,
            tasks=tasks, progress=progress, finished=finished, samples=samples_folder,
            open_text=open_text, train_split=train_split,
        )  # fmt: skip


def _evaluate_tasks(
    models, *, token_dir, corpus, data_dir, split, workdir, settings, seed, max_per_task, tasks,
    progress, finished, samples, open_text, train_split,
) -> dict[str, Any]:  # fmt: skip
    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.codec import api as codec_api
    from gpa_jax.sampling import Request

    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; expected a subset of {TASKS}")
    codec, vocab = models.codec, models.sampler.vocab
    rate = int(codec.sample_rate)
    se_skipped = se_skip_reason(models.sampler, token_dir, split) if "se" in tasks else None
    if se_skipped:
        logging.info("evaluation: se skipped: %s", se_skipped)
    data = load_split(token_dir, vocab, corpus, split, data_dir, codec.n_q, codec.hop_length, rate,
                      features=reads_features(models.sampler), tts_text=models.sampler.tts_text,
                      noisy="se" in tasks and not se_skipped)  # fmt: skip
    bank = data.bank
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"split": split, "judge": models.judge.name}
    bar = tqdm(total=len(tasks), desc="evaluate tasks", disable=not progress)

    if "asr" in tasks:
        plan, _ = planning.plan_task("asr", bank, settings, seed, split)
        plan = _select(plan, max_per_task, rng)
        requests = [Request.asr(data.codes(int(r[TGT]))[:1], id=bank.ids[r[TGT]],
                                source_features=data.features(int(r[TGT]))) for r in plan]  # fmt: skip
        results = _generate(models, requests, "asr")
        refs = [bank.texts[r[TGT]] for r in plan]
        hyps = [res.text or "" for res in results]
        out["asr"] = asr_metrics.error_rates(refs, hyps, ids=[bank.ids[r[TGT]] for r in plan]).as_dict()
        out["asr"]["failed"] = sum(not res.ok for res in results)
        out["asr"]["decoding"] = models.sampler.asr_decoding
        # Both conventions: corpus WER ("wer", the headline) and the mean per-utterance WER.
        utt_wers = [asr_metrics.utterance_wer(ref, hyp) for ref, hyp in zip(refs, hyps, strict=True)]
        out["asr"]["mean_utterance_wer"] = float(np.mean(utt_wers)) if utt_wers else None
        store = SampleStore(workdir, "asr", rate, samples)
        for r, res, wer in zip(plan, results, utt_wers, strict=True):
            store.add(bank.ids[r[TGT]], data.wav(int(r[TGT])), text=bank.texts[r[TGT]],
                      hypothesis=res.text or "", error=res.error, speaker=bank.speakers[r[TGT]], wer=wer)
        finished["asr"] = store.count
        bar.update()

    for task in ("tts", "vc"):
        if task not in tasks:
            continue
        plan, _ = planning.plan_task(task, bank, settings, seed, split)
        plan = _select(plan, max_per_task, rng)
        if not len(plan):
            out[task] = {"error": f"no {task} examples could be planned on {split}"}
            bar.update()
            continue
        # The acoustic stage's voice prompt may be longer than the LM's reference crop.
        voice_frames = models.acoustic.prompt_frames if models.acoustic is not None else 0
        crops = [planning.voice_crop(bank, r, voice_frames) for r in plan]
        refs = [data.codes(*crop) for crop in crops]
        ref_rows = [data.features(*crop) for crop in crops]
        if task == "tts":
            requests = [Request.tts(bank.texts[r[TGT]], ref, id=bank.ids[r[TGT]], seed=seed + i,
                                    reference_features=rows)
                        for i, (r, ref, rows) in enumerate(zip(plan, refs, ref_rows, strict=True))]
        else:
            requests = [Request.vc(data.codes(int(r[SRC]))[:1], ref, id=bank.ids[r[TGT]], seed=seed + i,
                                   source_features=data.features(int(r[SRC])), reference_features=rows)
                        for i, (r, ref, rows) in enumerate(zip(plan, refs, ref_rows, strict=True))]
        results = _generate(models, requests, task)
        for res in results:  # an almost empty output cannot be judged: it counts as failed
            if res.ok and len(res.rvq1) < MIN_OUTPUT_FRAMES:
                res.error = f"generated only {len(res.rvq1)} frames (< {MIN_OUTPUT_FRAMES})"
        ok = [i for i, res in enumerate(results) if res.ok]
        wavs: dict[int, np.ndarray] = {}
        if ok:
            synth = acoustic_api.synthesize(
                models.acoustic, codec, [results[i].rvq1 for i in ok], [refs[i] for i in ok]
            )
            wavs = dict(zip(ok, synth, strict=True))
        texts = [bank.texts[r[TGT]] for r in plan]
        truth = [data.wav(int(r[TGT])) for r in plan]
        ref_wavs = [data.wav(*crop) for crop in crops]
        voices = [bank.speakers[r[TGT]] for r in plan]
        gen_hyps = models.judge.transcribe([wavs[i] for i in ok], rate) if ok else []
        hyp = dict(zip(ok, gen_hyps, strict=True))
        truth_hyps = models.judge.transcribe(truth, rate)
        # Two ceilings between the recording and the LM's output: the codec decoding all
        # RVQ layers of the target's codes, and the target's own RVQ-1 codes through the
        # acoustic stage and codec decoder (what a perfect LM would be heard as).
        target_codes = [data.codes(int(r[TGT])) for r in plan]
        resynth = codec_api.decode_batch(codec, target_codes)
        chain = acoustic_api.synthesize(models.acoustic, codec, [c[0] for c in target_codes], refs)
        figures: dict[str, Any] = {"examples": len(plan), "failed": len(plan) - len(ok)}
        report = asr_metrics.judge_wer_report
        reports = {
            "truth": report(texts, truth_hyps, voices),
            "codec": report(texts, models.judge.transcribe(resynth, rate), voices),
            "truth_tokens": report(texts, models.judge.transcribe(chain, rate), voices),
        }
        if ok:
            reports["generated"] = report([texts[i] for i in ok], gen_hyps, [voices[i] for i in ok])
        for which, r in reports.items():
            key = "judge_wer" if which == "generated" else f"judge_wer_{which}"
            figures[key], figures[f"{key}_mean_utt"] = r["corpus_wer"], r["mean_utterance_wer"]
        figures["judge_wer_by_voice"] = {which: r["per_group"] for which, r in reports.items()}
        figures["judge_normalizer"] = reports["truth"]["normalizer"]
        utt_wer = dict(zip(ok, reports["generated"]["utterance_wer"], strict=True)) if ok else {}
        sims = _speaker_figures(models.speaker, task, plan, bank, data, wavs, ref_wavs, rate)
        figures.update(sims.pop("_summary", {}))
        out[task] = figures
        store = SampleStore(workdir, task, rate, samples)
        for i, r in enumerate(plan):
            uid = bank.ids[r[TGT]]
            ref_path = store.add(f"{uid}.reference", ref_wavs[i], role="reference", speaker=bank.speakers[r[REF]],
                                 utterance=bank.ids[r[REF]])
            meta = dict(role="generated", text=texts[i], reference_wav=os.path.basename(ref_path), speaker=bank.speakers[r[TGT]],
                        reference_speaker=bank.speakers[r[REF]], reference_utterance=bank.ids[r[REF]],
                        judge_hypothesis=hyp.get(i), error=results[i].error,
                        stop=results[i].stop, **{k: v[i] for k, v in sims.items()})
            if task == "vc":
                src = int(r[SRC])
                meta["source_wav"] = os.path.basename(store.add(
                    f"{uid}.source", data.wav(src), role="source", speaker=bank.speakers[src],
                    utterance=bank.ids[src]))
                meta["source_speaker"] = bank.speakers[src]
            if i in wavs:
                meta["judge_wer"] = utt_wer[i]
                store.add(uid, wavs[i], **meta)
        finished[task] = store.count
        bar.update()
    if open_text and "tts" in tasks:
        plan, _ = planning.plan_task("tts", bank, settings, seed, split)
        known = {w for t in domain_texts(token_dir, train_split) for w in t.split()}
        voice_frames = models.acoustic.prompt_frames if models.acoustic is not None else 0
        store = SampleStore(workdir, "tts_open", rate, samples)
        out["tts_open"] = open_text_lib.evaluate(
            models, data, plan, known_words=known, seed=seed, voice_frames=voice_frames, store=store,
            count=min(open_text, len(open_text_lib.SENTENCES)),
        )  # fmt: skip
        finished["tts_open"] = store.count
    if "se" in tasks:
        if se_skipped:
            out["se"] = {"skipped": se_skipped}
        else:
            store = SampleStore(workdir, "se", rate, samples)
            out["se"] = evaluate_se(models, data, token_dir, split, settings, seed=seed,
                                    rng=rng, max_per_task=max_per_task, store=store)  # fmt: skip
            finished["se"] = store.count
        bar.update()
    bar.close()
    # Does the LM read its input on these rows' split? (teacher-forced, no generation)
    out["conditioning"] = conditioning.conditioning_report(
        models.sampler, bank, settings, split=split, seed=seed,
        tasks=[t for t in conditioning.readable_tasks(models.sampler, bank) if t in tasks],
    )  # fmt: skip
    return out


def se_skip_reason(sampler, token_dir: str, split: str) -> str | None:
    """Why SE cannot be evaluated (the LM was not trained with it, or the split has no
    noisy inputs), None when it can."""
    from gpa_jax.tasks import token_shards

    if "se" in sampler.untrained:
        return "the LM was not trained for se (tasks.rates.se is 0 or absent)"
    if token_shards.split_noisy(token_shards.read_manifest(token_dir), split) is None:
        return f"split {split!r} of {token_dir} has no noisy inputs (launch.tokenize --noisy_inputs)"
    return None


def noisy_wavs(data: SplitData, token_dir: str, split: str, utterances: Sequence[int]) -> list[np.ndarray]:
    """The noisy input of each bank utterance as a wav, rebuilt from the recordings with the
    settings and babble pool the split's manifest names (`gpa_jax.audio.noise`); an SNR
    unlike the stored one (recordings read otherwise than when tokenized) is an error."""
    from gpa_jax.audio import noise
    from gpa_jax.tasks import token_shards

    spec = token_shards.split_noisy(token_shards.read_manifest(token_dir), split)
    settings = noise.NoiseSettings.from_dict(spec)
    bank = data.bank
    speaker_of = dict(zip(bank.ids, bank.speakers, strict=True))
    missing = [i for i in spec["babble_ids"] if i not in data.audio or i not in speaker_of]
    if missing:
        raise ValueError(f"{split}: babble utterances {missing[:3]} of {token_dir} have no recording")
    pool = noise.BabblePool.from_clips(spec["babble_ids"], [speaker_of[i] for i in spec["babble_ids"]],
                                       [data.audio[i] for i in spec["babble_ids"]])  # fmt: skip
    wavs = []
    for u in utterances:
        made = noise.make_noisy(data.wav(u), bank.ids[u], bank.speakers[u], pool, settings)
        if abs(made.snr_db - float(bank.noisy_snr_db[u])) > 1e-3 or made.kind != bank.noisy_kinds[u]:
            raise ValueError(
                f"{split}/{bank.ids[u]}: the rebuilt noisy input ({made.kind}, {made.snr_db:.2f} dB) "
                f"is not the tokenized one ({bank.noisy_kinds[u]}, {bank.noisy_snr_db[u]:.2f} dB): "
                "re-tokenize the corpus"
            )
        wavs.append(made.wav)
    return wavs


def evaluate_se(
    models: EvalModels, data: SplitData, token_dir: str, split: str,
    settings: planning.PlanSettings, *, seed: int, rng: np.random.Generator,
    max_per_task: int, store: SampleStore,
) -> dict[str, Any]:  # fmt: skip
    """SE figures of up to `max_per_task` utterances (module docstring): judge WER, STOI and
    mel distance of the enhanced output and of the noisy input, both against the clean
    recording; the samples (noisy input, then output) go to `store`."""
    from gpa_jax.acoustic import api as acoustic_api
    from gpa_jax.codec.evaluate import mel_distance, stoi
    from gpa_jax.sampling import Request

    bank, codec = data.bank, models.codec
    rate = int(codec.sample_rate)
    plan, _ = planning.plan_task("se", bank, settings, seed, split)
    plan = _select(plan, max_per_task, rng)
    if not len(plan):
        return {"error": f"no se examples could be planned on {split}"}
    utts = [int(r[SRC]) for r in plan]
    prompts = [bank.utterance_noisy_codes(u) for u in utts]  # every layer: the voice prompt
    rows = reads_features(models.sampler)
    requests = [Request.se(p, id=bank.ids[u], seed=seed + i,
                           source_features=bank.utterance_noisy_features(u) if rows else None)
                for i, (u, p) in enumerate(zip(utts, prompts, strict=True))]  # fmt: skip
    results = _generate(models, requests, "se")
    for res in results:
        if res.ok and len(res.rvq1) < MIN_OUTPUT_FRAMES:
            res.error = f"generated only {len(res.rvq1)} frames (< {MIN_OUTPUT_FRAMES})"
    ok = [i for i, res in enumerate(results) if res.ok]
    wavs: dict[int, np.ndarray] = {}
    if ok:
        synth = acoustic_api.synthesize(models.acoustic, codec, [results[i].rvq1 for i in ok],
                                        [prompts[i] for i in ok])  # fmt: skip
        wavs = dict(zip(ok, synth, strict=True))
    clean = [data.wav(u) for u in utts]
    noisy = noisy_wavs(data, token_dir, split, utts)
    texts = [bank.texts[u] for u in utts]
    voices = [bank.speakers[u] for u in utts]
    report = asr_metrics.judge_wer_report
    noisy_hyps = models.judge.transcribe(noisy, rate)
    reports = {"noisy": report(texts, noisy_hyps, voices),
               "truth": report(texts, models.judge.transcribe(clean, rate), voices)}  # fmt: skip
    gen_hyps = dict(zip(ok, models.judge.transcribe([wavs[i] for i in ok], rate), strict=True)) if ok else {}
    if ok:
        reports["generated"] = report([texts[i] for i in ok], [gen_hyps[i] for i in ok], [voices[i] for i in ok])
    figures: dict[str, Any] = {"examples": len(plan), "failed": len(plan) - len(ok),
                               "snr_db_mean": float(np.mean([bank.noisy_snr_db[u] for u in utts]))}  # fmt: skip
    for which, r in reports.items():
        key = "judge_wer" if which == "generated" else f"judge_wer_{which}"
        figures[key], figures[f"{key}_mean_utt"] = r["corpus_wer"], r["mean_utterance_wer"]
    noisy_stoi = [stoi(c, n, rate) for c, n in zip(clean, noisy, strict=True)]
    noisy_mel = [mel_distance(c, n, rate) for c, n in zip(clean, noisy, strict=True)]
    figures["stoi_noisy"], figures["mel_distance_noisy"] = float(np.mean(noisy_stoi)), float(np.mean(noisy_mel))
    out_stoi = {i: stoi(clean[i], wavs[i], rate) for i in ok}
    out_mel = {i: mel_distance(clean[i], wavs[i], rate) for i in ok}
    if ok:  # over the outputs made; the noisy figures of those same rows beside them
        figures["stoi"], figures["mel_distance"] = float(np.mean(list(out_stoi.values()))), float(np.mean(list(out_mel.values())))
        figures["stoi_noisy_same_rows"] = float(np.mean([noisy_stoi[i] for i in ok]))
    for i, u in enumerate(utts):
        uid = bank.ids[u]
        noisy_path = store.add(f"{uid}.noisy", noisy[i], role="noisy", utterance=uid, text=texts[i], speaker=voices[i],
                               snr_db=float(bank.noisy_snr_db[u]), noise=bank.noisy_kinds[u],
                               judge_hypothesis=noisy_hyps[i], stoi=noisy_stoi[i], mel_distance=noisy_mel[i])  # fmt: skip
        if i in wavs:
            store.add(uid, wavs[i], role="generated", text=texts[i], speaker=voices[i],
                      noisy_wav=os.path.basename(noisy_path), judge_hypothesis=gen_hyps[i],
                      error=results[i].error, stop=results[i].stop, stoi=out_stoi[i],
                      mel_distance=out_mel[i])  # fmt: skip
    return figures


def _speaker_figures(encoder, task, plan, bank, data, wavs, ref_wavs, rate) -> dict[str, Any]:
    """Per-row similarities (lists, None where no output) plus a '_summary' of means."""
    if encoder is None or not wavs:
        return {}
    if rate != SPEAKER_RATE:
        raise ValueError(f"speaker encoders take {SPEAKER_RATE} Hz audio; the codec makes {rate} Hz")
    ok = sorted(wavs)
    gen = encoder.embed([wavs[i] for i in ok])
    ref = encoder.embed(ref_wavs)
    ref_speakers = np.array([bank.speakers[r[REF]] for r in plan])
    rows: dict[str, list] = {"sim_reference": [None] * len(plan)}
    to_ref = cosine(gen, ref[ok])
    # Similarity to the other voices: mean over reference clips of other speakers.
    to_others = []
    for j, i in enumerate(ok):
        others = ref_speakers != ref_speakers[i]
        to_others.append(float(np.mean(cosine(gen[j][None], ref[others]))) if others.any() else np.nan)
    summary = {"sim_reference": float(np.mean(to_ref)), "sim_other_voices": float(np.nanmean(to_others))}
    for j, i in enumerate(ok):
        rows["sim_reference"][i] = float(to_ref[j])
    if task == "vc":
        src = encoder.embed([data.wav(int(plan[i][SRC])) for i in ok])
        to_src = cosine(gen, src)
        summary["sim_source"] = float(np.mean(to_src))
        rows["sim_source"] = [None] * len(plan)
        for j, i in enumerate(ok):
            rows["sim_source"][i] = float(to_src[j])
    rows["_summary"] = summary  # type: ignore[assignment]
    return rows


def results_sections(results: dict[str, Any], title: str = "") -> dict[str, str]:
    """Markdown tables of `evaluate_tasks` output (plus 'codec' figures if present); `title`
    prefixes every section's name (one split among several)."""
    sections = {}
    gain = {t: f.get("gain") for t, f in results.get("conditioning", {}).items() if isinstance(f, dict)}
    if "asr" in results:
        a = results["asr"]
        sections[f"ASR (LM, {a.get('decoding', 'greedy')})"] = markdown_table(
            [{"split": results["split"], "utterances": a["num_utterances"], "WER": a["wer"],
              "mean utt WER": a.get("mean_utterance_wer"), "CER": a["cer"], "failed": a["failed"],
              "conditioning gain": gain.get("asr")}],
            ["split", "utterances", "WER", "mean utt WER", "CER", "failed", "conditioning gain"])
    rows, voice_rows = [], []
    for task in ("tts", "vc"):
        if task in results and "error" not in results[task]:
            f = results[task]
            gap = f["judge_wer"] - f["judge_wer_truth"] if "judge_wer" in f else None
            rows.append({"task": task, "examples": f["examples"], "failed": f["failed"],
                         "judge WER": f.get("judge_wer"), "mean utt WER": f.get("judge_wer_mean_utt"),
                         "judge WER on truth": f["judge_wer_truth"],
                         "gap (points)": None if gap is None else 100 * gap,
                         "judge WER, codec resynthesis": f.get("judge_wer_codec"),
                         "judge WER, truth tokens": f.get("judge_wer_truth_tokens"),
                         "sim to reference": f.get("sim_reference"), "sim to other voices": f.get("sim_other_voices"),
                         "sim to source": f.get("sim_source"), "conditioning gain": gain.get(task)})
            by_voice = f.get("judge_wer_by_voice", {})
            for voice, g in by_voice.get("generated", {}).items():
                truth = by_voice["truth"].get(voice, {})
                voice_rows.append({"task": task, "voice": voice, "examples": g["num_utterances"],
                                   "judge WER": g["corpus_wer"], "mean utt WER": g["mean_utterance_wer"],
                                   "judge WER on truth": truth.get("corpus_wer")})
    if "tts_open" in results:
        f = results["tts_open"]
        gap = f["judge_wer"] - f["judge_wer_truth"] if "judge_wer" in f and "judge_wer_truth" in f else None
        rows.append({"task": "tts, open text", "examples": f["examples"], "failed": f["failed"],
                     "judge WER": f.get("judge_wer"), "mean utt WER": f.get("judge_wer_mean_utt"),
                     "judge WER on truth": f.get("judge_wer_truth"), "gap (points)": None if gap is None else 100 * gap,
                     "sim to reference": f.get("sim_reference"), "sim to other voices": f.get("sim_other_voices"),
                     "unseen words": f["unseen_word_rate"]})
    missing = [f"{task}: {results[task]['error']}" for task in ("tts", "vc", "se") if "error" in results.get(task, {})]
    if "skipped" in results.get("se", {}):
        missing.append(f"se: skipped, {results['se']['skipped']}")
    if missing:
        sections["Not evaluated"] = "\n".join(f"- {m}" for m in missing)
    if rows:
        sections[f"TTS / VC (judge: {results['judge']})"] = markdown_table(
            rows, ["task", "examples", "failed", "judge WER", "mean utt WER", "judge WER on truth",
                   "gap (points)", "judge WER, codec resynthesis", "judge WER, truth tokens",
                   "sim to reference", "sim to other voices", "sim to source", "conditioning gain",
                   *(["unseen words"] if "tts_open" in results else [])])
    if "se" in results and "examples" in results["se"]:
        f = results["se"]
        sections[f"SE (judge: {results['judge']}; vs the clean recording)"] = markdown_table(
            [{"audio": "enhanced (LM output)", "examples": f["examples"] - f["failed"],
              "judge WER": f.get("judge_wer"), "STOI": f.get("stoi"), "mel distance": f.get("mel_distance")},
             {"audio": "noisy input", "examples": f["examples"], "judge WER": f["judge_wer_noisy"],
              "STOI": f["stoi_noisy"], "mel distance": f["mel_distance_noisy"]},
             {"audio": "clean recording", "examples": f["examples"], "judge WER": f["judge_wer_truth"],
              "STOI": 1.0, "mel distance": 0.0}],
            ["audio", "examples", "judge WER", "STOI", "mel distance"])  # fmt: skip
    if voice_rows:
        sections["TTS / VC judge WER per voice"] = markdown_table(
            voice_rows, ["task", "voice", "examples", "judge WER", "mean utt WER", "judge WER on truth"])
    if gain:
        sections["Conditioning (nats per output token)"] = conditioning.format_report(results["conditioning"])
    return {f"{title}: {name}" if title else name: body for name, body in sections.items()}


# --- loading a trained chain from a work directory ------------------------------------------


def load_models(
    workdir: str,
    *,
    judge: Judge | None = None,
    lm_config: Any = None,
    codec_config: Any = None,
    acoustic_variant: str | None = "nar",
    acoustic_config: Any = None,
    speaker_encoder: str = "resemblyzer",
    speaker_split: str = "train",
    data_dir: str | None = None,
    speaker_utterances: int = 600,
    stages_workdir: str | None = None,
) -> EvalModels:
    """The chain the demo trains in `workdir`: codec (<W>/codec), LM sampler (<W>/checkpoints,
    params only), acoustic stage (<W>/acoustic/<variant>), plus the speaker encoder
    ('resemblyzer' is pretrained; 'lda' / 'mfcc' are fitted on `speaker_split` recordings;
    "" = none). `stages_workdir` (default `workdir`) holds everything but the LM: the
    corpus, codec, token shards, text vocabulary and acoustic stage, e.g. the work dir of
    a sweep whose run dirs hold only their LMs.

    Defaults: the LM config saved with its checkpoint, configs/codec_tiny.py, and the tiny
    acoustic config of `acoustic_variant` over the LM's token shards. acoustic_variant=None
    loads no acoustic stage (ASR needs none), so a work dir without one still serves it.
    """
    from gpa_jax import config_utils, paths
    from gpa_jax.acoustic import recipe
    from gpa_jax.acoustic.api import AcousticStage
    from gpa_jax.acoustic.kind import codec_codebooks
    from gpa_jax.codec import data as codec_data
    from gpa_jax.codec import train as codec_train
    from gpa_jax.evaluation import speaker as speaker_lib
    from gpa_jax.sampling import Sampler, config_from_checkpoint
    from gpa_jax.tasks.config import resolve_paths
    from gpa_jax.training import checkpoint as ckpt_lib
    from gpa_jax.training.data_iter import task_vocabulary

    stages = stages_workdir or workdir
    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    lm_config = config_from_checkpoint(lm_dir) if lm_config is None else lm_config
    if codec_config is None:
        codec_config = config_utils.load_config(os.path.join(recipe.REPO, "configs", "codec_tiny.py"))
    if acoustic_config is None and acoustic_variant is not None:
        acoustic_config = recipe.stage_config(acoustic_variant, resolve_paths(lm_config.tasks, stages)[0])
    codec, _ = codec_train.restore_codec(codec_config, codec_train.checkpoint_dir(stages))
    vocab = task_vocabulary(lm_config, stages)
    sampler = Sampler.from_checkpoint(lm_dir, vocab, config=lm_config)
    # The codec loaded above gives the NAR's codebooks (no second codec restore).
    stage = None
    if acoustic_variant is not None:
        stage = AcousticStage.from_workdir(
            acoustic_config, os.path.join(stages, "acoustic", acoustic_variant),
            codebooks=codec_codebooks(codec),
        )  # fmt: skip
    encoder = None
    if speaker_encoder == "resemblyzer":
        encoder = speaker_lib.make_speaker_encoder(speaker_encoder)
    elif speaker_encoder:
        clips = codec_data.load_clips(
            lm_config.tasks.corpus, speaker_split, data_dir=data_dir or paths.tfds_dir(stages),
            sample_rate=int(codec.sample_rate), limit=speaker_utterances,
        )
        encoder = speaker_lib.make_speaker_encoder(speaker_encoder, wavs=clips.audio, speakers=clips.speakers)
    return EvalModels(codec=codec, sampler=sampler, acoustic=stage, judge=judge, speaker=encoder,
                      speaker_name=speaker_encoder)


def domain_texts(token_dir: str, split: str = "train") -> list[str]:
    """Transcripts of a token split (for the judge's domain LM: pass the training split)."""
    from gpa_jax.tasks import token_shards

    return sorted({u.text for u in token_shards.iter_utterances(token_dir, split) if u.text})


def run_evaluation(
    workdir: str,
    *,
    lm_config: Any,
    codec_config: Any,
    acoustic_variant: str = "nar",
    splits: Sequence[str] = ("test",),
    max_per_task: int = 40,
    judge_kind: str = "whisper",
    judge_model_dir: str = "",
    speaker_encoder: str = "resemblyzer",
    seed: int = 0,
    progress: bool = True,
    open_text: bool = True,
    stages_workdir: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Evaluates the chain trained in `workdir` on each of `splits`; writes
    <workdir>/eval/results.{json,md} and the samples; returns (results, path of results.md).
    Everything but the LM comes from `stages_workdir` (default `workdir`; `load_models`).

    The first split is the headline: its figures are results.json's top level (`asr.wer`
    etc.) and its samples go to <workdir>/samples/<task>; every further split's figures
    are under results["splits"][split] and its samples under <workdir>/samples_<split>/.
    """

    from gpa_jax import paths
    from gpa_jax.evaluation.judge import make_judge
    from gpa_jax.evaluation.results import write_results, write_tensorboard
    from gpa_jax.tasks.config import resolve_paths

    if not splits:
        raise ValueError("run_evaluation needs at least one split")
    stages = stages_workdir or workdir
    token_dir, _ = resolve_paths(lm_config.tasks, stages)
    data_dir = paths.tfds_dir(stages)
    # Only pocketsphinx decodes with a domain LM (built from the training transcripts).
    texts = domain_texts(token_dir) if judge_kind == "pocketsphinx" else None
    judge = make_judge(judge_kind, domain_texts=texts, workdir=workdir, model_dir=judge_model_dir)
    models = load_models(
        workdir, judge=judge, lm_config=lm_config, codec_config=codec_config,
        acoustic_variant=acoustic_variant, speaker_encoder=speaker_encoder, data_dir=data_dir,
        stages_workdir=stages,
    )
    settings = planning.PlanSettings.from_config(lm_config.tasks, int(lm_config.train.seq_len))
    by_split = {}
    for index, split in enumerate(splits):
        by_split[split] = evaluate_tasks(
            models, token_dir=token_dir, corpus=lm_config.tasks.corpus, data_dir=data_dir, split=split,
            workdir=workdir, settings=settings, seed=seed, max_per_task=max_per_task, progress=progress,
            samples_folder="samples" if index == 0 else f"samples_{split}", clear_results=index == 0,
            # TTS of sentences outside the corpus grammar, on the headline split only.
            open_text=(max_per_task or len(open_text_lib.SENTENCES)) if index == 0 and open_text else 0,
            train_split=lm_config.tasks.train_split,
        )  # fmt: skip
    results = dict(by_split[splits[0]])
    if len(splits) > 1:
        results["splits"] = {split: by_split[split] for split in splits[1:]}
    results["acoustic_stage"] = acoustic_variant
    results["speaker_encoder"] = speaker_encoder
    sections: dict[str, str] = {}
    for split in splits:
        sections.update(results_sections(by_split[split], title=split if len(splits) > 1 else ""))
        codec_eval = os.path.join(stages, "codec", f"eval_{split}.json")
        if paths.isfile(codec_eval):
            codec_figures = paths.read_json(codec_eval)
            if split == splits[0]:
                results["codec"] = codec_figures
            rows = [{"decode": name, **{k: v for k, v in figures.items() if not isinstance(v, dict)}}
                    for name, figures in codec_figures.get("variants", {}).items()]
            if rows:
                title = f"{split}: Codec resynthesis" if len(splits) > 1 else "Codec resynthesis"
                sections[title] = markdown_table(rows, list(rows[0]))
    _, md_path = write_results(workdir, results, sections)
    from gpa_jax.training import checkpoint as ckpt_lib

    steps = ckpt_lib.saved_steps(ckpt_lib.checkpoint_dir(workdir))
    write_tensorboard(workdir, steps[-1] if steps else 0, results, tasks=TASKS)
    return results, md_path
