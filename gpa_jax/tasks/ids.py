"""The fixed ids of the LM vocabulary: control tokens, task tags, delimiters, text offset.

Their table is in `gpa_jax.tasks.vocab` (SpeechVocabulary composes them with the text and
audio ranges). They live here, without seqio or TensorFlow, because the training host reads
them too (guided attention finds the conditioning input by its delimiter ids) and must not
import TensorFlow (pyproject.toml's forbidden import contract; ARCHITECTURE.md, Layering).
"""

from __future__ import annotations

from gpa_jax.tasks.config import TASK_NAMES

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
BOS_ID = 3
TAG_START, TAG_END = 4, 16  # [start, end) of task-tag ids
DELIM_START, DELIM_END = 16, 64  # [start, end) of delimiter ids
TEXT_OFFSET = 64
# The text range of tasks.vocab.text = "byte": seqio.ByteVocabulary's 256 bytes after its
# 3 special ids (tests/tasks/test_vocab.py checks it against seqio).
BYTE_TEXT_SIZE = 259
PAD_TO_MULTIPLE = 128

# Append only: an entry's position fixes its id. Task tags are the task table itself.
TASK_TAGS: tuple[str, ...] = TASK_NAMES
DELIMITERS: tuple[str, ...] = ("text", "ref_audio", "src_audio", "tgt_audio")
assert len(TASK_TAGS) <= TAG_END - TAG_START
assert len(DELIMITERS) <= DELIM_END - DELIM_START


def _control_names() -> list[str]:
    names = ["<pad>", "<eos>", "<unk>", "<bos>"]
    for i in range(TAG_START, TAG_END):
        k = i - TAG_START
        names.append(f"<|{TASK_TAGS[k]}|>" if k < len(TASK_TAGS) else f"<|reserved_{i}|>")
    for i in range(DELIM_START, DELIM_END):
        k = i - DELIM_START
        names.append(f"<|{DELIMITERS[k]}|>" if k < len(DELIMITERS) else f"<|reserved_{i}|>")
    return names


CONTROL_TOKENS: tuple[str, ...] = tuple(_control_names())


def delimiter_id(name: str) -> int:
    if name not in DELIMITERS:
        raise KeyError(f"no delimiter {name!r}; delimiters: {DELIMITERS}")
    return DELIM_START + DELIMITERS.index(name)
