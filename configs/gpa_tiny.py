"""gpa_tiny: the CPU-trainable LM (~7 M params), the LM benchmarks' default (launch.bench_*).

vocab 4096, d 256, 6 layers, 4 heads / 2 kv heads (head_dim 64), SwiGLU 1024, tied,
QK-norm: the HF Qwen3 baseline's shape, so JAX and PyTorch throughput compare 1:1.
Float32 compute and unrolled layers: faster on a 2-core CPU (`launch.bench_train
--compare=model.dtype=bfloat16 --compare=model.scan_layers=true` times the others), and
compile time is no issue at 6 layers. `arg`: comma-separated variants, "bf16" (compute in
bfloat16), "continuous" or "hybrid" (model.audio_input: the LauraGPT / WHISPER-GPT audio
inputs, which read the token shards' log-mel rows), "se" (speech enhancement as a fourth
task, tasks.rates.se = SE_RATE: needs token shards tokenized with --noisy_inputs); e.g.
configs/gpa_tiny.py:hybrid,se. Without "se" the LM trains TTS/ASR/VC only, as before SE
existed (tasks.rates.se = 0; `--config.tasks.rates.se=...` turns it on as well).

Data: the SeqIO task mixture (config.tasks) over the token shards of the default
synthetic corpus, found under the run's work directory as the earlier stages write them:

    python -m launch.train_spm --corpus=synthetic_speech/default --workdir=W
    python -m launch.tokenize --config=configs/codec_tiny.py --workdir=W \\
        --corpus=synthetic_speech/default
    python -m launch.train --config=configs/gpa_tiny.py --workdir=W

Recipe (issue "the LM learns its tasks"; each lever measured on the default corpus, this
2-core CPU, conditioning gain = nats per output token gained from the example's own input):
- NUM_STEPS = 1500 steps of 8 x 512 tokens (~110 min on 2 cores at 4.4 s/step,
  launch.bench_train, 2026-12-07), the cosine schedule
  ending with the run (overriding train.num_steps alone leaves optimizer.total_steps
  here). With a 3 s reference, at 400 steps the LM had learned the outputs' prior only
  (gain ASR 0.042, TTS 0.002, VC 0.002); at 1500: ASR 0.35, TTS 0.026, VC 0.032.
- Byte text (tasks.vocab.text = "byte"): TTS reads characters, which spell unseen words,
  and ASR emits them; no SentencePiece stage is needed.
- Guided attention on one head (model.guide_weight 0.3): the text <-> audio alignment of
  TTS and ASR is monotonic, and the penalty shows the head where to look.
- Auxiliary CTC on the ASR source (model.ctc_weight 0.5, gpa_jax.training.asr_ctc): the
  source positions' final hidden states are trained by CTC towards the transcript, so
  they carry what was said before the transcript positions learn to read them. Trial
  (default corpus, vocab 640, batch 4, schedule of 1800 steps stopped at 1200, test
  split, 2026-12-07), gain at 600 / 1200 vs the same recipe without it (session before):
  ASR 0.10 / 1.00 vs 0.08 / 0.52, TTS 0.012 / 0.033 vs 0.010 / 0.049, VC 0.015 / 0.082
  vs 0.005 / 0.054; ASR eval loss 0.92 vs 1.57 (guide_weight 1.0 run) at 1200; greedy
  ASR WER 0.87 (CER 0.59) while the CTC head itself reads the same rows at WER 0.51,
  CER 0.15: the source positions carry the words, the LM's decoding reads them poorly.
  Its softmax spans the control and byte-text ids only (model.ctc_classes = 323): over
  the whole 4096-id table it cost 1.6 s of a 5.8 s step, now 0.3 s of 4.4 s.
- ASR decoded by the joint CTC/attention beam search (sampling.asr: beam 8, ctc_weight
  0.5; gpa_jax.sampling.joint_ctc) instead of greedy: the CTC prefix probability keeps the
  decoder on what the source says. Chosen on 40 validation rows of that trial's LM
  (`launch.asr_decoding`, 2026-12-07): WER greedy 0.835, attention-only beam 4 0.956,
  ctc_weight 0.3 / 0.5 / 0.7 at beam 4 0.371 / 0.351 / 0.365, 0.5 / 0.7 at beam 8
  0.327 / 0.365; on 40 test rows 0.866 greedy -> 0.315 (CER 0.593 -> 0.119); ~4.5x
  greedy's time per utterance on this CPU.
- A 1 s reference in the LM prompt (tasks.ref_max_frames 50, ref_min_frames 25) instead
  of 3 s: with 150 RVQ-1 frames of the voice to continue, the LM modelled the target from
  the reference and barely read the text (TTS) or the source (VC). The acoustic stage
  still gets its own 3 s voice prompt (planning.voice_crop). Shorter TTS/VC examples also
  pack more examples, ASR included, into each step. Measured (test split, conditioning
  gain at 300 / 900 / 1500, vs the 3 s reference in the session before, on its own codec): ASR 0.06 / 0.31 / 1.29 vs
  0.05 / 0.12 / 0.35, TTS 0.007 / 0.051 / 0.178 vs 0.003 / 0.010 / 0.026, VC
  0.000 / 0.038 / 0.158 vs 0.004 / 0.010 / 0.032; greedy ASR WER at 1500 0.67 vs 0.92.
- Audio inputs as tokens (model.audio_input): the `continuous` log-mel variant read the
  ASR source less (gain 0.12 vs 0.35 at 1500) and costs 2.3 s/step (README); the CTC
  teacher's features (data.token_features=ctc_teacher, 0 encoder layers, same step time)
  lifted the TTS gain (0.26 at 1500 with the 3 s reference) but read the ASR source
  less too (0.21; WER 1.13).
- TTS text as espeak-ng IPA (tasks.tts_text="phonemes") instead of the transcript: TTS
  read its text less (gain 0.021 vs 0.130 at 1800 steps of batch 4, README), so the
  transcript stays.
Where this recipe stands (the default chain, its own 5500-step codec, 2026-12-07, test
split): conditioning gain at 1500 steps ASR 2.54, TTS 0.092, VC 0.044; ASR WER 0.293 (CER
0.087) by the joint search, 0.397 greedy (README has the curve).
Checkpoints every 300 steps are all kept: `launch.evaluate --curves` scores each.
The vocabulary the data needs (256 bytes + 64 control ids + one RVQ-1 range, padded to
128) fits in vocab_size 4096; the trainer checks that.

Mixture rates (by examples) favour ASR: an ASR example carries ~20 loss tokens (its
transcript) against ~220 for TTS or VC (the target's frames), so at the default
0.4/0.3/0.3 ASR gets ~4 % of the gradient and its validation loss lagged (trial on the
default corpus, 400 steps: at step 300 TTS and VC were at 0.43-0.44 of their unigram
baselines, ASR at 0.83).
"""

import ml_collections

from gpa_jax.models.config import lm_model_config, mesh_config
from gpa_jax.sampling.config import sampling_config
from gpa_jax.tasks.config import tasks_config
from gpa_jax.tasks.ids import BYTE_TEXT_SIZE, TEXT_OFFSET
from gpa_jax.training.config import data_config, lm_config, optimizer_config

NUM_STEPS = 1500
VARIANTS = ("bf16", "continuous", "hybrid", "se")
# SE's share when the "se" variant is on (relative to tts 0.3 / asr 0.45 / vc 0.25; an SE
# example carries as many loss tokens as a VC one). Not tuned.
SE_RATE = 0.25


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variants = {v.strip() for v in (arg or "").split(",") if v.strip()}
    unknown = sorted(variants - set(VARIANTS))
    if unknown:
        raise ValueError(f"gpa_tiny variants {unknown} unknown; valid: {', '.join(VARIANTS)}")
    if {"continuous", "hybrid"} <= variants:
        raise ValueError("gpa_tiny: choose one audio input, continuous or hybrid")
    audio_input = next((v for v in ("continuous", "hybrid") if v in variants), "tokens")
    model = lm_model_config(
        vocab_size=4096,
        num_layers=6,
        embed_dim=256,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        mlp_dim=1024,
        rope_theta=10_000.0,
        max_len=512,
        scan_layers=False,
        dtype="bfloat16" if "bf16" in variants else "float32",
        # 'cpu' attention on the CPU backend (layers.blocked_attention), jax's own on GPU/TPU.
        attention_impl="auto",
        guide_weight=0.3,
        ctc_weight=0.5,
        ctc_classes=TEXT_OFFSET + BYTE_TEXT_SIZE,  # controls + byte text: CTC's only labels
        audio_input=audio_input,
    )
    config = lm_config(
        model=model,
        mesh=mesh_config(shape=(-1, 1, 1)),
        data=data_config(source="tasks"),
        tasks=tasks_config(
            corpus="synthetic_speech/default", rates=dict(tts=0.3, asr=0.45, vc=0.25),
            vocab=dict(text="byte"), ref_max_frames=50, ref_min_frames=25,
        ),
    )
    if "se" in variants:
        config.tasks.rates.se = SE_RATE
    # The decoding every sampler of this LM uses (saved with its checkpoints;
    # gpa_jax.sampling.config.lm_sampling): ASR by the joint CTC/attention search (module
    # docstring), chosen on validation.
    config.sampling = sampling_config(asr=dict(beam=8, ctc_weight=0.5))
    config.train.num_steps = NUM_STEPS
    config.train.batch_size = 8
    config.train.seq_len = 512
    config.train.log_every = 20
    config.train.eval_every = 300
    config.train.eval_steps = 16
    config.train.checkpoint_every = 300
    # Every checkpoint stays: `launch.evaluate --curves` scores each (eval/curves.*).
    config.train.keep_checkpoints = 0
    config.optimizer = optimizer_config(
        learning_rate=2e-3, warmup_steps=50, total_steps=NUM_STEPS, weight_decay=0.01
    )
    return config
