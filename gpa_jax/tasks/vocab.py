"""One vocabulary for the LM: control tokens, text tokens and one id range per audio stream.

`SpeechVocabulary` is a `seqio.Vocabulary` that composes a text vocabulary (a
SentencePiece model trained on the corpus transcripts, see `gpa_jax.tasks.spm`, or
seqio's ByteVocabulary) with discrete audio tokens (RVQ layer k of the codec: codebook_size
ids) and control tokens. Id layout (T = text vocabulary size, C = codebook size,
S = number of audio streams in the vocabulary, A = 64 + T):

    | ids                      | tokens                                                  |
    |--------------------------|---------------------------------------------------------|
    | 0                        | <pad>  (seqio PAD; never a real token)                  |
    | 1                        | <eos>  (ends every example; seqio eos_id)               |
    | 2                        | <unk>  (seqio unk_id; ids >= vocab_size decode as it)   |
    | 3                        | <bos>  (reserved; the default layout does not use it)   |
    | 4 .. 15                  | task tags: 4 <|tts|>, 5 <|asr|>, 6 <|vc|>, 7 <|se|>,    |
    |                          |   8..15 <|reserved_k|> for later tasks (S2TT, ...)      |
    | 16 .. 63                 | delimiters: 16 <|text|>, 17 <|ref_audio|>,              |
    |                          |   18 <|src_audio|>, 19 <|tgt_audio|>, 20..63 reserved   |
    | 64 .. 64+T-1             | text: text-vocabulary id t is 64 + t                    |
    | A+k*C .. A+(k+1)*C-1     | audio stream k (RVQ layer k, 0-based): code c -> A+k*C+c |
    | A+S*C .. V-1             | unused padding, V = vocab_size = roundup(A+S*C, 128)    |

With the defaults (SentencePiece 1024, one stream, C = 1024) the text ids are 64..1087,
RVQ-1 is 1088..2111 and vocab_size is 2176. New task tags or delimiters take reserved
slots, so existing ids never move; changing T, S or C does move the later ranges (a
trained LM belongs to one vocabulary: keep `vocab.spec()` with the checkpoint).

Text ids are offset by 64 wholesale (the text vocabulary's own PAD/EOS/UNK at 0..2 map to
64..66 and are never emitted: `encode` adds no EOS). `decode` keeps only text-range ids
(so task tags, delimiters and audio tokens are skipped) and stops at the first <eos>,
like every seqio vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import seqio
import tensorflow as tf

from gpa_jax import paths
from gpa_jax.tasks.ids import (  # noqa: F401 (re-exported: the table above documents them)
    BOS_ID,
    CONTROL_TOKENS,
    DELIM_END,
    DELIM_START,
    DELIMITERS,
    EOS_ID,
    PAD_ID,
    PAD_TO_MULTIPLE,
    TAG_END,
    TAG_START,
    TASK_TAGS,
    TEXT_OFFSET,
    UNK_ID,
    delimiter_id,
)

_CONTROL_IDS = {name: i for i, name in enumerate(CONTROL_TOKENS)}


class SpeechVocabulary(seqio.Vocabulary):
    """Control + text + audio ids in one space (layout table in the module docstring)."""

    def __init__(
        self,
        text_vocab: seqio.Vocabulary,
        *,
        num_audio_streams: int,
        codebook_size: int,
        pad_to_multiple: int = PAD_TO_MULTIPLE,
    ):
        if num_audio_streams < 1 or codebook_size < 1:
            raise ValueError(
                f"need >= 1 audio stream and codebook size, got {num_audio_streams}, "
                f"{codebook_size}"
            )
        self.text_vocab = text_vocab
        self.num_audio_streams = int(num_audio_streams)
        self.codebook_size = int(codebook_size)
        self.pad_to_multiple = int(pad_to_multiple)
        self.text_size = int(text_vocab.vocab_size)
        self.audio_offset = TEXT_OFFSET + self.text_size
        self.used_size = self.audio_offset + self.num_audio_streams * self.codebook_size
        m = self.pad_to_multiple
        self._size = -(-self.used_size // m) * m
        super().__init__(extra_ids=0)

    # --- seqio.Vocabulary interface ----------------------------------------------------

    @property
    def _base_vocab_size(self) -> int:
        return self._size

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    def _encode(self, s: str) -> list[int]:
        return [TEXT_OFFSET + int(i) for i in self.text_vocab.encode(s)]

    def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
        return self.text_vocab.encode_tf(s) + TEXT_OFFSET

    def _decode(self, ids: Iterable[int]) -> str:
        hi = TEXT_OFFSET + self.text_size
        text_ids = [int(i) - TEXT_OFFSET for i in ids if TEXT_OFFSET <= int(i) < hi]
        return self.text_vocab.decode(text_ids)

    def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
        # Non-text ids become the text vocabulary's PAD, which both SentencePiece and
        # ByteVocabulary drop when detokenizing; shapes stay dense.
        ids = tf.convert_to_tensor(ids)
        is_text = (ids >= TEXT_OFFSET) & (ids < TEXT_OFFSET + self.text_size)
        text_ids = tf.where(is_text, ids - TEXT_OFFSET, tf.zeros_like(ids) + PAD_ID)
        return self.text_vocab.decode_tf(text_ids)

    # --- control tokens ----------------------------------------------------------------

    @staticmethod
    def token_id(name: str) -> int:
        """Id of a control token by its surface form, e.g. "<|tts|>" or "<eos>"."""
        if name not in _CONTROL_IDS:
            raise KeyError(
                f"unknown control token {name!r}; known: {', '.join(CONTROL_TOKENS[:20])}"
            )
        return _CONTROL_IDS[name]

    @staticmethod
    def task_tag_id(task: str) -> int:
        if task not in TASK_TAGS:
            raise KeyError(f"no task tag for {task!r}; tags: {TASK_TAGS}")
        return TAG_START + TASK_TAGS.index(task)

    @staticmethod
    def delimiter_id(name: str) -> int:
        return delimiter_id(name)

    # --- audio -------------------------------------------------------------------------

    def audio_range(self, stream: int) -> tuple[int, int]:
        """[start, end) of the ids of audio stream (RVQ layer) `stream`, 0-based."""
        if not 0 <= stream < self.num_audio_streams:
            raise ValueError(
                f"audio stream {stream} not in this vocabulary (it has "
                f"{self.num_audio_streams} streams, 0..{self.num_audio_streams - 1})"
            )
        start = self.audio_offset + stream * self.codebook_size
        return start, start + self.codebook_size

    def audio_to_ids(self, codes: np.ndarray | Sequence[int], stream: int) -> np.ndarray:
        """Codes of RVQ layer `stream` (any shape, values in [0, C)) -> int32 token ids."""
        start, _ = self.audio_range(stream)
        codes = np.asarray(codes)
        if codes.size and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(
                f"codes span [{codes.min()}, {codes.max()}], outside [0, {self.codebook_size})"
            )
        return (codes.astype(np.int64) + start).astype(np.int32)

    def ids_to_audio(
        self, ids: np.ndarray | Sequence[int], stream: int, strict: bool = True
    ) -> np.ndarray:
        """Token ids of stream `stream` -> int32 codes.

        strict=True raises on any id outside the stream's range; strict=False drops such
        ids (e.g. stray control tokens in a sampled sequence) and keeps the rest in order.
        """
        start, end = self.audio_range(stream)
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        inside = (ids >= start) & (ids < end)
        if strict and not inside.all():
            bad = ids[~inside][:5].tolist()
            raise ValueError(f"ids {bad} are not audio stream {stream} tokens [{start}, {end})")
        return (ids[inside] - start).astype(np.int32)

    # --- inspection --------------------------------------------------------------------

    def is_text(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= TEXT_OFFSET) & (ids < TEXT_OFFSET + self.text_size)

    def is_audio(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids)
        return (ids >= self.audio_offset) & (ids < self.used_size)

    def describe(self, ids: Iterable[int]) -> list[str]:
        """Human-readable token names: control names, text pieces, a<k>:<code> for audio."""
        out = []
        for i in (int(x) for x in ids):
            if 0 <= i < TEXT_OFFSET:
                out.append(CONTROL_TOKENS[i])
            elif i < self.audio_offset:
                out.append(self._piece(i - TEXT_OFFSET))
            elif i < self.used_size:
                k, c = divmod(i - self.audio_offset, self.codebook_size)
                out.append(f"a{k}:{c}")
            else:
                out.append(f"<unused_{i}>")
        return out

    def _piece(self, text_id: int) -> str:
        if isinstance(self.text_vocab, seqio.SentencePieceVocabulary):
            return self.text_vocab.tokenizer.id_to_piece(text_id)
        return repr(self.text_vocab.decode([text_id]))

    def _text_name(self) -> str:
        if isinstance(self.text_vocab, seqio.SentencePieceVocabulary):
            return f"SentencePiece({self.text_vocab.sentencepiece_model_file})"
        return type(self.text_vocab).__name__

    def spec(self) -> dict[str, Any]:
        """What defines the id layout; keep it with checkpoints and token-shard manifests."""
        return {
            "text_vocab": self._text_name(),
            "text_size": self.text_size,
            "num_audio_streams": self.num_audio_streams,
            "codebook_size": self.codebook_size,
            "vocab_size": self.vocab_size,
            "task_tags": list(TASK_TAGS),
            "delimiters": list(DELIMITERS),
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpeechVocabulary):
            return False
        return (
            self.text_vocab == other.text_vocab
            and self.num_audio_streams == other.num_audio_streams
            and self.codebook_size == other.codebook_size
            and self._size == other._size
        )

    def __hash__(self) -> int:
        return hash(
            (
                type(self.text_vocab).__name__,
                self.text_size,
                self.num_audio_streams,
                self.codebook_size,
                self._size,
            )
        )

    def __str__(self) -> str:
        return (
            f"SpeechVocabulary(text={self._text_name()}, text_size={self.text_size}, "
            f"audio={self.num_audio_streams}x{self.codebook_size}, vocab_size={self.vocab_size})"
        )

    __repr__ = __str__


def make_text_vocabulary(kind: str, spm_model: str = "") -> seqio.Vocabulary:
    """ "byte" -> seqio.ByteVocabulary; "spm" -> seqio.SentencePieceVocabulary(spm_model)."""
    if kind == "byte":
        return seqio.ByteVocabulary()
    if kind == "spm":
        if not spm_model:
            raise ValueError(
                "text vocabulary 'spm' needs a model path: train one with "
                "python -m launch.train_spm and set tasks.vocab.spm_model"
            )
        if not paths.exists(spm_model):
            raise FileNotFoundError(f"SentencePiece model {spm_model!r} does not exist")
        # seqio loads the model with tf.io.gfile; a local copy (gcsfuse or the host
        # cache, gpa_jax.paths.local_path) works with or without TensorFlow's GCS support.
        return seqio.SentencePieceVocabulary(paths.local_path(spm_model))
    raise ValueError(f"text vocabulary kind must be 'byte' or 'spm', got {kind!r}")


def make_vocabulary(vocab_config: Any, codebook_size: int) -> SpeechVocabulary:
    """The SpeechVocabulary described by `config.tasks.vocab` (see tasks_config)."""
    return SpeechVocabulary(
        make_text_vocabulary(vocab_config.text, vocab_config.spm_model),
        num_audio_streams=vocab_config.audio_streams,
        codebook_size=codebook_size,
    )
