"""Does the LM read its input? Teacher-forced loss with the right vs another input.

    report = conditioning_report(sampler, bank, settings, split="test")
    print(format_report(report))

For rows planned on a split by the training rules (`gpa_jax.tasks.planning`), the loss
(nats per output token, <eos> included) of each task's output given its own input is set
against the loss of the same output given another row's input:

    asr  transcript | its source audio          vs  | another row's source audio
    tts  target RVQ-1 | its text (+ reference)   vs  | another row's text, same reference
    vc   target RVQ-1 | its source (+ reference) vs  | another row's source, same reference
    se   clean RVQ-1  | its noisy input          vs  | another row's noisy input

`gain` = mismatched - matched. A model that has learned the task loses much more with the
wrong input; a gain near 0 means it models the output's prior only (e.g. plausible
sentences for ASR, plausible speech of the reference voice for TTS) and ignores the
input, however low its loss. Prompts are the sampler's (`Sampler.prepare`: the training
layout), so this is the trainer's validation loss split by what the model attends to.
Rows whose prompt + output do not fit the model are counted and skipped. The report
covers the tasks the LM was trained on (`readable_tasks`): SE only for an LM trained with
it, on a bank loaded with its noisy inputs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.tasks import planning
from gpa_jax.tasks.planning import REF, REF_LEN, REF_START, SRC, TGT
from gpa_jax.text import normalize_transcript

TASKS = ("asr", "tts", "vc", "se")
BATCH = 8


def readable_tasks(sampler, bank: planning.Bank) -> tuple[str, ...]:
    """The tasks a report can score: those the LM was trained on, SE only when `bank`
    holds the noisy inputs."""
    return tuple(t for t in TASKS if t not in sampler.untrained and (t != "se" or bank.has_noisy))


@nnx.jit
def _prompt_hidden(model, tokens, segment_ids, audio_features, audio_mask):
    """Final hidden states [b, l, d] of prefix-only rows (right padded: segment id 0),
    read as the sampler's prefill reads a prompt."""
    _, hidden = model(tokens, segment_ids, None, segment_ids, audio_features=audio_features,
                      audio_mask=audio_mask, return_hidden=True)  # fmt: skip
    return hidden


@nnx.jit
def _log_probs(model, tokens, segment_ids, positions, prefix_mask, audio_features, audio_mask):
    logits = model(tokens, segment_ids, positions, prefix_mask, audio_features=audio_features,
                   audio_mask=audio_mask)  # fmt: skip
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def sequence_nll(model, sequences: Sequence[tuple], max_len: int) -> list[float]:
    """Mean NLL of each (prompt, output[, audio]) item's output tokens, prompt as the
    bidirectional prefix (as in training); batches of BATCH rows padded to `max_len`.
    `audio` (a continuous-input model's prompt rows: features [len(prompt), F], mask) is
    the sampler's `_Prepared.audio`."""
    out = []
    dim = int(getattr(model.cfg, "audio_feature_dim", 1))
    for lo in range(0, len(sequences), BATCH):
        chunk = sequences[lo : lo + BATCH]
        tokens = np.zeros((BATCH, max_len), np.int32)
        segment_ids = np.zeros((BATCH, max_len), np.int32)
        prefix = np.zeros((BATCH, max_len), np.int32)
        features = np.zeros((BATCH, max_len, dim), np.float32)
        mask = np.zeros((BATCH, max_len), np.int32)
        for b, (prompt, output, *audio) in enumerate(chunk):
            seq = np.concatenate([prompt, output]).astype(np.int32)
            tokens[b, : len(seq)] = seq
            segment_ids[b, : len(seq)] = 1
            prefix[b, : len(prompt)] = 1
            if audio and audio[0] is not None:
                features[b, : len(prompt)], mask[b, : len(prompt)] = audio[0]
        positions = np.broadcast_to(np.arange(max_len, dtype=np.int32), (BATCH, max_len))
        arrays = (tokens, segment_ids, positions, prefix, features, mask)
        lp = np.asarray(_log_probs(model, *(jnp.asarray(a) for a in arrays)))
        for b, (prompt, output, *_) in enumerate(chunk):
            at = np.arange(len(prompt) - 1, len(prompt) + len(output) - 1)  # predicts output
            out.append(float(-np.mean(lp[b, at, np.asarray(output)])))
    return out


def _pairs(sampler, bank, task: str, rows: np.ndarray, cond_rows: np.ndarray):
    """(prompt, output, audio) of each row's output under the input of the matching cond
    row (audio: the continuous variant's prompt rows, which follow the input)."""
    from gpa_jax.sampling import Request

    vocab, pairs = sampler.vocab, []
    for r, c in zip(rows, cond_rows, strict=True):
        if task == "asr":
            request = Request.asr(bank.utterance_codes(int(c[TGT]))[:1],
                                  source_features=bank.utterance_features(int(c[TGT])))  # fmt: skip
            output = vocab.encode(normalize_transcript(bank.texts[r[TGT]]))
        elif task == "se":
            request = Request.se(bank.utterance_noisy_codes(int(c[SRC]))[:1],
                                 source_features=bank.utterance_noisy_features(int(c[SRC])))  # fmt: skip
            output = vocab.audio_to_ids(bank.utterance_codes(int(r[TGT]))[0], 0)
        else:
            crop = (int(r[REF]), int(r[REF_START]), int(r[REF_LEN]))
            ref, ref_rows = bank.utterance_codes(*crop), bank.utterance_features(*crop)
            if task == "tts":
                request = Request.tts(bank.texts[c[TGT]], ref, reference_features=ref_rows)
            else:
                request = Request.vc(bank.utterance_codes(int(c[SRC]))[:1], ref,
                                     source_features=bank.utterance_features(int(c[SRC])),
                                     reference_features=ref_rows)  # fmt: skip
            output = vocab.audio_to_ids(bank.utterance_codes(int(r[TGT]))[0], 0)
        prepared = sampler.prepare(request)
        pairs.append((np.asarray(prepared.prompt, np.int32),
                      np.asarray(list(output) + [1], np.int32), prepared.audio))  # fmt: skip
    return pairs


def conditioning_report(
    sampler, bank: planning.Bank, settings: planning.PlanSettings, *, split: str,
    num: int = 32, seed: int = 0, tasks: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """{task: {rows, skipped, nll_matched, nll_mismatched, gain}} (module docstring) for
    `tasks` (default `readable_tasks`)."""
    max_len = int(sampler.max_total_len)
    report: dict[str, Any] = {"split": split}
    for task in readable_tasks(sampler, bank) if tasks is None else tasks:
        plan, _ = planning.plan_task(task, bank, settings, seed, split)
        plan = plan[:num]
        # The input of the next row with another text (rows are planned per utterance).
        texts = [bank.text_index[r[TGT]] for r in plan]
        cond = []
        for i in range(len(plan)):
            j = next((j for j in range(i + 1, i + len(plan)) if texts[j % len(plan)] != texts[i]), None)
            cond.append(None if j is None else j % len(plan))
        keep = [i for i, j in enumerate(cond) if j is not None]
        matched = _pairs(sampler, bank, task, plan[keep], plan[keep])
        mismatched = _pairs(sampler, bank, task, plan[keep], plan[[cond[i] for i in keep]])
        fits = [k for k in range(len(keep)) if max(len(matched[k][0]) + len(matched[k][1]),
                                                   len(mismatched[k][0]) + len(mismatched[k][1])) <= max_len]  # fmt: skip
        if not fits:
            report[task] = {"rows": 0, "skipped": len(plan)}
            continue
        a = sequence_nll(sampler.model, [matched[k] for k in fits], max_len)
        b = sequence_nll(sampler.model, [mismatched[k] for k in fits], max_len)
        report[task] = {
            "rows": len(fits),
            "skipped": len(plan) - len(fits),
            "nll_matched": float(np.mean(a)),
            "nll_mismatched": float(np.mean(b)),
            "gain": float(np.mean(b) - np.mean(a)),
        }
    return report


def attention_on_input(
    sampler, bank: planning.Bank, settings: planning.PlanSettings, *, split: str,
    num: int = 8, seed: int = 0, tasks: Sequence[str] | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Which heads read the input: per task {rows, mass, correlation}, each [layers][heads]
    averaged over `num` planned rows. `mass`: the attention each head puts on the task's
    conditioning input (TTS text, ASR / VC / SE source: `attention_guide.conditioning_keys`)
    from the positions that predict the output; `correlation`: of those positions' order
    with the mean input position each attends (near 1: a monotonic alignment). The maps
    are `inspect.attention_maps` (tokens-input LMs with unrolled layers)."""
    from gpa_jax.evaluation.inspect import attention_maps
    from gpa_jax.training.attention_guide import conditioning_keys

    if sampler.cfg.audio_input != "tokens":
        raise ValueError(f"attention maps read token inputs only, not model.audio_input={sampler.cfg.audio_input!r}")
    report: dict[str, Any] = {"split": split}
    for task in readable_tasks(sampler, bank) if tasks is None else tasks:
        plan = planning.plan_task(task, bank, settings, seed, split)[0][:num]
        masses, correlations = [], []
        for prompt, output, _ in _pairs(sampler, bank, task, plan, plan):
            tokens = np.concatenate([prompt, output[:-1]])  # the last input predicts <eos>
            if len(tokens) > sampler.max_total_len:
                continue
            outputs = np.arange(len(tokens)) >= len(prompt)
            keys = np.asarray(conditioning_keys(jnp.asarray(tokens)[None], jnp.ones((1, len(tokens)), jnp.int32),
                                                jnp.asarray(outputs)[None]))[0]  # fmt: skip
            key_pos = np.flatnonzero(keys)
            if not len(key_pos):
                continue
            maps = attention_maps(sampler.model, tokens, prefix_length=len(prompt))
            on_input = maps[:, :, len(prompt) - 1 :][..., key_pos]  # [L, H, queries, keys]
            mass = on_input.sum(-1)
            where = (on_input * np.linspace(0.0, 1.0, len(key_pos))).sum(-1) / np.maximum(mass, 1e-9)
            order = np.arange(where.shape[-1], dtype=np.float64)
            centred = where - where.mean(-1, keepdims=True)
            spread = np.sqrt((centred**2).sum(-1) * ((order - order.mean()) ** 2).sum())
            corr = (centred * (order - order.mean())).sum(-1) / np.where(spread > 0, spread, np.inf)
            masses.append(mass.mean(-1))
            correlations.append(corr)
        if not masses:
            report[task] = {"rows": 0}
            continue
        report[task] = {"rows": len(masses), "mass": np.mean(masses, 0).round(4).tolist(),
                        "correlation": np.mean(correlations, 0).round(4).tolist()}  # fmt: skip
    return report


def format_attention(report: Mapping[str, Any]) -> str:
    lines = [f"which heads read the input? ({report['split']} split; per layer, each head's "
             "attention mass on the input / correlation with a monotonic alignment)"]  # fmt: skip
    for task in TASKS:
        r = report.get(task)
        if not r or not r["rows"]:
            continue
        lines.append(f"{task} ({r['rows']} rows):")
        for layer, (mass, corr) in enumerate(zip(r["mass"], r["correlation"], strict=True)):
            cells = "  ".join(f"{m:.2f}/{c:+.2f}" for m, c in zip(mass, corr, strict=True))
            lines.append(f"  layer {layer}: {cells}")
    return "\n".join(lines)


def asr_transcripts(sampler, bank: planning.Bank, settings: planning.PlanSettings, *, split: str,
                    num: int = 40, seed: int = 0) -> dict[str, Any]:  # fmt: skip
    """ASR of the first `num` planned ASR rows of `split`: {rows, wer, cer, decoding}
    (corpus rates, `gpa_jax.evaluation.asr_metrics`), next to the conditioning gain."""
    plan = planning.plan_task("asr", bank, settings, seed, split)[0][:num]
    return asr_rows_error_rates(sampler, bank, plan)


def asr_rows_error_rates(sampler, bank: planning.Bank, rows: np.ndarray) -> dict[str, Any]:
    """{rows, wer, cer, decoding}: the sampler's transcripts of planned ASR `rows` against
    their texts (decoded as `sampler.asr_decoding` says)."""
    from gpa_jax.evaluation import asr_metrics
    from gpa_jax.sampling import Request

    requests = [Request.asr(bank.utterance_codes(int(r[TGT]))[:1],
                            source_features=bank.utterance_features(int(r[TGT])))
                for r in rows]  # fmt: skip
    hyps = [res.text or "" for res in sampler.generate(requests)]
    rates = asr_metrics.error_rates([bank.texts[r[TGT]] for r in rows], hyps)
    return {"rows": len(rows), "wer": float(rates.wer), "cer": float(rates.cer),
            "decoding": sampler.asr_decoding}  # fmt: skip


def ctc_transcripts(sampler, bank: planning.Bank, rows: np.ndarray) -> list[str]:
    """The auxiliary CTC head's greedy transcripts (model.ctc_weight > 0,
    `gpa_jax.training.asr_ctc`) of planned ASR `rows`: the argmax at each source position
    of the ASR prompt, repeats merged, blanks (<pad>) dropped."""
    from gpa_jax.sampling import Request
    from gpa_jax.tasks.ids import PAD_ID

    model, hyps = sampler.model, []
    for r in rows:
        prepared = sampler.prepare(Request.asr(bank.utterance_codes(int(r[TGT]))[:1],
                                               source_features=bank.utterance_features(int(r[TGT]))))  # fmt: skip
        n = len(prepared.prompt)
        length = -(-n // 64) * 64  # one compile per 64-token bucket
        tokens = np.zeros((1, length), np.int32)
        tokens[0, :n] = prepared.prompt
        features = mask = None
        if prepared.audio is not None:  # the continuous / hybrid variants' feature rows
            frames, read = prepared.audio
            features = np.zeros((1, length, frames.shape[1]), np.float32)
            features[0, :n], mask = frames, np.zeros((1, length), np.int32)
            mask[0, :n] = read
        segments = (np.arange(length) < n).astype(np.int32)[None]
        hidden = _prompt_hidden(model, tokens, segments, features, mask)
        source = hidden[:, sampler.source_slots(prepared)]
        best = np.asarray(jnp.argmax(model.ctc_logits(source), axis=-1))[0]
        keep = (best != PAD_ID) & np.concatenate([[True], best[1:] != best[:-1]])
        hyps.append(sampler.vocab.decode(best[keep].tolist()))
    return hyps


def ctc_error_rates(sampler, bank: planning.Bank, rows: np.ndarray) -> dict[str, Any]:
    """{rows, wer, cer} of `ctc_transcripts`: what the source positions carry, to set
    against the LM's own transcripts of the same rows (`asr_rows_error_rates`)."""
    from gpa_jax.evaluation import asr_metrics

    hyps = ctc_transcripts(sampler, bank, rows)
    rates = asr_metrics.error_rates([bank.texts[r[TGT]] for r in rows], hyps)
    return {"rows": len(rows), "wer": float(rates.wer), "cer": float(rates.cer)}


def format_report(report: Mapping[str, Any]) -> str:
    at = f"step {report['step']}, " if "step" in report else ""
    lines = [f"does the LM read its input? ({at}{report['split']} split, nats per output token)",
             f"{'task':<5} {'rows':>5} {'own input':>10} {'other input':>12} {'gain':>7}"]  # fmt: skip
    for task in TASKS:
        r = report.get(task)
        if not r:
            continue
        if not r["rows"]:
            lines.append(f"{task:<5} {0:>5}   (no row fits the model)")
            continue
        lines.append(f"{task:<5} {r['rows']:>5} {r['nll_matched']:>10.4f} "
                     f"{r['nll_mismatched']:>12.4f} {r['gain']:>7.4f}")  # fmt: skip
    if "asr_transcripts" in report:
        a = report["asr_transcripts"]
        lines.append(f"ASR of {a['rows']} rows, {a.get('decoding', 'greedy')}: WER {a['wer']:.3f}, "
                     f"CER {a['cer']:.3f}")  # fmt: skip
    if "asr_ctc" in report:
        a = report["asr_ctc"]
        lines.append(f"CTC head, greedy, same rows: WER {a['wer']:.3f}, CER {a['cer']:.3f}")
    if "attention" in report:
        lines.append(format_attention(report["attention"]))
    return "\n".join(lines)


def report_for_workdir(
    workdir: str, *, split: str = "validation", num: int = 32, seed: int = 0,
    step: int | None = None, asr_rows: int = 0, sampling: Any = None, attention_rows: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Loads the LM of <workdir>/checkpoints (params of `step`, default the newest) and its
    token shards; the report (with the step), and with `asr_rows` the ASR error rates of
    that many rows (`asr_transcripts`), decoded as `sampling` (default: the checkpoint
    config's, `gpa_jax.sampling.config.lm_sampling`) says; with `attention_rows`, which
    heads read the input on that many rows per task (`attention_on_input`)."""
    from gpa_jax.sampling import Sampler, config_from_checkpoint
    from gpa_jax.tasks.config import resolve_paths
    from gpa_jax.training import checkpoint as ckpt_lib
    from gpa_jax.training.data_iter import task_vocabulary

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    config = config_from_checkpoint(lm_dir, step)
    vocab = task_vocabulary(config, workdir)
    sampler = Sampler.from_checkpoint(lm_dir, vocab, config=config, step=step, sampling=sampling)
    token_dir = resolve_paths(config.tasks, workdir)[0]
    settings = planning.PlanSettings.from_config(config.tasks, int(config.train.seq_len))
    bank = planning.load_bank(token_dir, split, vocab, layers=settings.ref_layers,
                              features=sampler.cfg.audio_input != "tokens", tts_text=settings.tts_text,
                              noisy="se" not in sampler.untrained)  # fmt: skip
    report = conditioning_report(sampler, bank, settings, split=split, num=num, seed=seed)
    if asr_rows:
        report["asr_transcripts"] = asr_transcripts(sampler, bank, settings, split=split,
                                                    num=asr_rows, seed=seed)  # fmt: skip
        if getattr(sampler.model, "ctc_proj", None) is not None:
            rows = planning.plan_task("asr", bank, settings, seed, split)[0][:asr_rows]
            report["asr_ctc"] = ctc_error_rates(sampler, bank, rows)
    if attention_rows:
        report["attention"] = attention_on_input(sampler, bank, settings, split=split,
                                                 num=attention_rows, seed=seed)  # fmt: skip
    report["step"] = ckpt_lib.saved_steps(lm_dir)[-1] if step is None else int(step)
    return report
