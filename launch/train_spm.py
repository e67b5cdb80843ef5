"""Trains the text half of the LM vocabulary: SentencePiece on a corpus' transcripts.

    python -m launch.train_spm --corpus=synthetic_speech/default --vocab_size=1024 \
        --workdir=runs/demo

Reads the normalised transcripts of `--split` straight from the TFDS text feature (audio
is not decoded) in `--tfds_data_dir` (default <workdir>/tfds) and writes the model to
`--output` (default <workdir>/spm/<corpus with / as _>_<vocab_size>.model), which is
where an LM config with `tasks.corpus` = --corpus, `tasks.vocab.spm_vocab_size` =
--vocab_size and an empty `tasks.vocab.spm_model` looks for it when trained with the same
--workdir (gpa_jax.tasks.config.resolve_paths).
"""

from __future__ import annotations

import time

from absl import app, flags, logging

from gpa_jax import paths
from gpa_jax.tasks import spm
from gpa_jax.tasks.config import default_spm_model
from launch import common

_CORPUS = flags.DEFINE_string("corpus", "synthetic_speech/default", "TFDS corpus[/config].")
_SPLIT = flags.DEFINE_string("split", "train", "Split whose transcripts train the model.")
_DATA_DIR = flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default <workdir>/tfds).")
_VOCAB_SIZE = flags.DEFINE_integer("vocab_size", 1024, "SentencePiece vocabulary size.")
_MODEL_TYPE = flags.DEFINE_enum("model_type", "unigram", ["unigram", "bpe"], "Model type.")
_OUTPUT = flags.DEFINE_string("output", None, "Output .model path.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # The work dir is only needed for what was not given explicitly.
    data_dir, output = _DATA_DIR.value, _OUTPUT.value
    if not (data_dir and output):
        workdir = common.existing_workdir()
        data_dir = data_dir or paths.tfds_dir(workdir)
        output = output or default_spm_model(workdir, _CORPUS.value, _VOCAB_SIZE.value)
    start = time.time()
    sentences = spm.corpus_transcripts(_CORPUS.value, _SPLIT.value, data_dir)
    pieces = spm.train_sentencepiece(
        sentences, output, _VOCAB_SIZE.value, model_type=_MODEL_TYPE.value
    )
    logging.info("trained in %.1f s", time.time() - start)
    print(f"wrote {output}: {pieces} pieces from {len(sentences)} transcripts")


if __name__ == "__main__":
    common.run(main)
