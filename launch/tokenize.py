"""Tokenizes a TFDS speech corpus with a trained codec into ArrayRecord token shards.

    python -m launch.tokenize --config=configs/codec_tiny.py --workdir=runs/demo \
        --corpus=synthetic_speech/tiny [--splits=train,validation] [--checkpoint_dir=...]

Restores the codec (params + codebook buffers) from the latest checkpoint in
--checkpoint_dir (default <workdir>/codec/checkpoints), encodes every split and writes
<workdir>/tokens/<corpus>/ (`gpa_jax.tasks.token_shards` layout, manifest with counts,
n_q, codebook size, frame rate, sha256 and each split's skipped bad audio). With
config.data.token_features="log_mel" (codec_tiny's default; --token_features overrides
it) every utterance also carries its token-aligned log-mel, the LM's continuous audio
input; --token_features=ctc_teacher stores the codec's CTC content teacher's features
(<workdir>/codec/teacher) instead. --noisy_inputs (config.data.noisy_inputs, off by
default) also stores every utterance's speech-enhancement input: the codes (and
features) of a noisy version of its clip, made deterministically from
config.data.noise_seed (`gpa_jax.audio.noise`); it encodes every clip twice. Rerunning skips splits already complete (with the asked-for features), so an
interrupted job resumes at the split it was on.
The job itself is `gpa_jax.codec.tokenization.tokenize_workdir`; this module only parses flags.
"""

from __future__ import annotations

from absl import app, flags

from gpa_jax import config_utils, preemption
from gpa_jax.codec.tokenization import TOKEN_FEATURES
from launch import common

config_utils.define_config_flag("configs/codec_tiny.py")
flags.DEFINE_string("data_dir", None, "TFDS data_dir of the corpus (default <workdir>/tfds).")
_CHECKPOINT_DIR = flags.DEFINE_string(
    "checkpoint_dir", None, "Codec checkpoints (default <workdir>/codec/checkpoints)."
)
_CORPUS = flags.DEFINE_string("corpus", None, "TFDS speech corpus (default config.data.corpus).")
_SPLITS = flags.DEFINE_list("splits", [], "Splits to tokenize (default: all of the corpus).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Utterances per encode call.")
_BUCKET_FRAMES = flags.DEFINE_integer(
    "bucket_frames", 25, "Length bucket in frames (one compile per bucket and batch size)."
)
_MAX_SECONDS = flags.DEFINE_float(
    "max_seconds", None, "Longer clips are skipped and counted (default config.data.max_seconds)."
)
_RECORDS_PER_SHARD = flags.DEFINE_integer("records_per_shard", 4096, "Utterances per shard.")
_TOKEN_FEATURES = flags.DEFINE_enum(
    "token_features", None, list(TOKEN_FEATURES),
    "Per-frame features stored with the codes, the LM's continuous audio input ('' none, "
    "'log_mel', 'ctc_teacher' the codec's CTC content teacher; default "
    "config.data.token_features).",
)  # fmt: skip
_NOISY_INPUTS = flags.DEFINE_bool(
    "noisy_inputs", None,
    "Also store each utterance's SE noisy input (coloured noise or babble at an SNR in "
    "config.data.noise_snr_db; default config.data.noisy_inputs, off).",
)  # fmt: skip
_MAX_BAD_FRACTION = flags.DEFINE_float(
    "max_bad_fraction", None,
    "Bad records (undecodable, bad or near-silent audio, lost to a cut shard) are skipped, "
    "counted and listed in the manifest; past this fraction of a split the job stops "
    "(default gpa_jax.corpora.MAX_BAD_FRACTION).",
)  # fmt: skip


@preemption.job(
    "tokenization",
    note="finished splits are kept (manifest); rerun the same "
    "command to resume at the first unfinished split",
)
def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    workdir = common.existing_workdir()
    from gpa_jax.codec import tokenization  # Imported here: JAX starts with the job.

    results = tokenization.tokenize_workdir(
        config,
        workdir,
        checkpoint_dir=_CHECKPOINT_DIR.value,
        corpus=_CORPUS.value,
        splits=_SPLITS.value,
        data_dir=flags.FLAGS.data_dir,
        max_seconds=_MAX_SECONDS.value,
        batch_size=_BATCH_SIZE.value,
        bucket_frames=_BUCKET_FRAMES.value,
        records_per_shard=_RECORDS_PER_SHARD.value,
        max_bad_fraction=_MAX_BAD_FRACTION.value,
        token_features=_TOKEN_FEATURES.value,
        noisy_inputs=_NOISY_INPUTS.value,
    )
    for split, entry in results.items():
        print(
            f"{split:<18} {entry['status']:<8} {entry['num_utterances']:>7} utts "
            f"{entry['num_frames']:>9} frames  bad audio: {entry['bad_audio']['count']}"
            f"{'  with SE noisy inputs' if entry.get('noisy') else ''}"
        )
        for bad in entry["bad_audio"].get("records", []):
            print(f"  skipped {bad['corpus']}/{bad['split']}/{bad['id'] or '?'} "
                  f"({bad['kind']}, {bad['count']} record(s)) in {bad['file']}: {bad['reason']}")  # fmt: skip
    print(f"tokens in {tokenization.tokens_dir(workdir, _CORPUS.value or config.data.corpus)}")


if __name__ == "__main__":
    common.run(main)
