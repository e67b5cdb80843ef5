"""The CTC machinery and the offline content teacher: vocabulary, learning, features, reuse."""

import os

import numpy as np
import pytest

from gpa_jax.codec import ctc
from gpa_jax.codec import teacher as teacher_lib
from gpa_jax.codec import train as codec_train
from tests.codec.test_train import tiny_config

SR = 16000
LETTERS = "abcde"
FREQS = {c: 300.0 + 250.0 * i for i, c in enumerate(LETTERS)}


def tone_utterance(text: str, rng: np.random.Generator) -> np.ndarray:
    """Each letter is a 0.12 s tone of its own pitch, letters separated by 0.04 s of quiet."""
    parts = []
    for c in text:
        t = np.arange(int(0.12 * SR)) / SR
        parts.append(0.3 * np.sin(2 * np.pi * FREQS[c] * t * rng.uniform(0.97, 1.03)))
        parts.append(np.zeros(int(0.04 * SR)))
    return (np.concatenate(parts) + 0.003 * rng.normal(size=sum(map(len, parts)))).astype(
        np.float32
    )


def tone_corpus(n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    texts = ["".join(rng.choice(list(LETTERS), size=rng.integers(3, 7))) for _ in range(n)]
    return [tone_utterance(s, rng) for s in texts], texts


def teacher_config(**overrides):
    return tiny_config(
        **{
            "teacher.kind": "ctc",
            "teacher.dim": 48,
            "teacher.ctc_layers": 2,
            "teacher.ctc_n_mels": 32,
            "teacher.ctc_steps": 150,
            "teacher.ctc_batch_size": 8,
            "teacher.ctc_learning_rate": 3e-3,
            **overrides,
        }
    )


def test_vocabulary_round_trip_and_greedy_decode():
    ids = ctc.text_to_ids("it's 42 cats")
    assert ids.min() >= 1 and ids.max() < ctc.VOCAB_SIZE
    logits = np.full((2 * len(ids) + 1, ctc.VOCAB_SIZE), -5.0)
    for t, k in enumerate(ids):  # each label, then a blank (repeats survive)
        logits[2 * t, k] = 5.0
        logits[2 * t + 1, ctc.BLANK] = 5.0
    assert ctc.greedy_decode(logits, len(logits)) == "it's 42 cats"
    assert ctc.greedy_decode(logits, 2) == "i"
    with pytest.raises(ValueError, match="outside the CTC vocabulary"):
        ctc.text_to_ids("Hello!")
    assert ctc.char_error_rate(["abc"], ["abd"]) == pytest.approx(1 / 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = teacher_config()
    directory = str(tmp_path_factory.mktemp("teacher"))
    meta = teacher_lib.train_teacher(
        config,
        directory,
        train_set=tone_corpus(96, seed=0),
        validation_set=tone_corpus(24, seed=1),
        progress=False,
    )
    return config, directory, meta


def test_ctc_teacher_learns_to_read_held_out_utterances(trained):
    config, directory, meta = trained
    # Untrained, the greedy decode is (near) empty: CER ~ 1. Learnt: most letters right.
    assert meta["validation_cer"] < 0.35, meta
    assert meta["teacher_config"]["dim"] == 48 and meta["steps"] == 150
    model = teacher_lib.load_teacher(config, directory)
    audio, texts = tone_corpus(6, seed=5)
    hyps = teacher_lib.transcribe_waveforms(model, audio)
    assert ctc.char_error_rate(texts, hyps) < 0.5


def test_teacher_features_follow_the_codec_frames(trained):
    import jax.numpy as jnp

    config, directory, _ = trained
    model = teacher_lib.load_teacher(config, directory)
    audio, _ = tone_corpus(2, seed=3)
    n = min(len(a) for a in audio)
    batch = jnp.asarray(np.stack([a[:n] for a in audio]))
    feats = np.asarray(model(batch))
    assert feats.shape == (2, -(-n // 320), 48)
    assert np.all(np.isfinite(feats)) and feats.std() > 0
    # A zero-padded item with its length gives nearly the features of the clip alone
    # (only the last STFT frame differs: zeros instead of reflection, which shifts the
    # per-utterance normalisation a little); padding without the length would not.
    padded = np.zeros((1, n + 6400), np.float32)
    padded[0, :n] = audio[0][:n]
    with_len = np.asarray(model(jnp.asarray(padded), jnp.asarray([n])))[0, : feats.shape[1] - 4]
    no_len = np.asarray(model(jnp.asarray(padded)))[0, : feats.shape[1] - 4]
    err = np.abs(with_len - feats[0, :-4]).mean()
    assert err < 0.02 and err < 0.5 * np.abs(no_len - feats[0, :-4]).mean()
    with pytest.raises(ValueError, match="trained with"):
        teacher_lib.load_teacher(teacher_config(**{"teacher.dim": 64}), directory)
    with pytest.raises(ValueError, match="teacher.layer"):
        teacher_lib.ContentTeacher(
            teacher_config(**{"teacher.layer": "9"}), rngs=__import__("flax").nnx.Rngs(0)
        )


def test_codec_trains_against_the_ctc_teacher_and_reuses_it(trained, tmp_path):
    config, directory, _ = trained
    config = teacher_config(**{"train.num_steps": 2, "teacher.path": directory})
    audio, texts = tone_corpus(4, seed=7)
    stamp = os.path.getmtime(os.path.join(directory, "meta.json"))
    result = codec_train.train(config, str(tmp_path), clips=audio, progress=False)
    assert np.isfinite(result.metrics["loss/distill"])
    assert os.path.getmtime(os.path.join(directory, "meta.json")) == stamp  # not retrained
    # No teacher at the default place and nothing to train one on: a clear error.
    fresh = teacher_config(**{"train.num_steps": 1})
    with pytest.raises(FileNotFoundError, match="no CTC teacher"):
        codec_train.train(fresh, str(tmp_path / "other"), clips=audio, progress=False)


def test_ctc_training_resumes_exactly_from_its_checkpoint(tmp_path):
    """A teacher run stopped at step 4 and rerun to 8 ends with the straight run's params."""
    from flax import nnx

    audio, texts = tone_corpus(12, seed=3)
    examples = [ctc.CTCExample(a, s) for a, s in zip(audio, texts, strict=True)]
    config = teacher_config()

    def run(stop_at: int, directory: str):
        model = teacher_lib.ContentTeacher(config, rngs=nnx.Rngs(5))
        ctc.train_ctc(
            model, teacher_lib._train_apply_wav, examples, steps=8, batch_size=4,
            learning_rate=3e-3, length_multiple=SR, seed=1, progress=False,
            checkpoint_dir=directory, checkpoint_every=4, stop_at=stop_at,
        )  # fmt: skip
        return [np.asarray(x) for x in __import__("jax").tree.leaves(nnx.state(model, nnx.Param))]

    straight = run(8, str(tmp_path / "straight"))
    run(4, str(tmp_path / "resumed"))  # "preempted" after its step-4 save
    resumed = run(8, str(tmp_path / "resumed"))
    assert sorted(os.listdir(tmp_path / "resumed")) == ["8"]  # the latest save is kept
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    fresh = run(4, str(tmp_path / "other"))
    assert not all(np.allclose(a, b) for a, b in zip(straight, fresh, strict=True))


def test_vq_bottleneck_teacher_reads_through_its_codes_and_saves_its_codebook(tmp_path):
    """teacher.ctc_vq_codes puts a VQ before the character head: the recogniser still
    learns through it, its codes follow the codec frames, and a reload gives the same codes."""
    import jax.numpy as jnp

    config = teacher_config(**{"teacher.ctc_vq_codes": 16})
    directory = str(tmp_path / "vq")
    meta = teacher_lib.train_teacher(
        config, directory, train_set=tone_corpus(96, seed=0),
        validation_set=tone_corpus(24, seed=1), progress=False,
    )  # fmt: skip
    # Untrained, CER ~1; through the bottleneck it learns slower than without (0.56 at
    # 150 steps vs < 0.35), as on the corpus (validation CER 0.14 vs 0.09).
    assert meta["validation_cer"] < 0.7, meta
    assert meta["teacher_config"]["ctc_vq_codes"] == 16
    model = teacher_lib.load_teacher(config, directory)
    audio, _ = tone_corpus(2, seed=3)
    n = min(len(a) for a in audio)
    batch = jnp.asarray(np.stack([a[:n] for a in audio]))
    codes = np.asarray(model.codes(batch))
    assert codes.shape == (2, -(-n // 320)) and codes.min() >= 0 and codes.max() < 16
    assert len(np.unique(codes)) > 3  # several letters, several codes
    again = teacher_lib.load_teacher(config, directory)
    np.testing.assert_array_equal(np.asarray(again.codes(batch)), codes)
    # A teacher without the bottleneck says so.
    with pytest.raises(ValueError, match="ctc_vq_codes"):
        teacher_lib.ContentTeacher(teacher_config(), rngs=__import__("flax").nnx.Rngs(0)).codes(batch)
    with pytest.raises(ValueError, match="trained with"):
        teacher_lib.load_teacher(teacher_config(), directory)


def test_codec_with_teacher_codes_as_rvq1_keeps_the_teacher_frozen_and_self_contained(tmp_path):
    """codec.quantizer='teacher': RVQ-1 codes are the teacher's VQ codes of the same audio,
    codec training leaves the teacher's weights as trained, and the codec checkpoint carries
    the teacher, so a restore needs no teacher directory."""
    import shutil

    import jax
    import jax.numpy as jnp
    from flax import nnx

    config = teacher_config(**{
        "teacher.ctc_vq_codes": 16, "teacher.ctc_steps": 20, "codec.codebook_size": 16,
        "codec.quantizer": "teacher", "train.num_steps": 2, "loss.adversarial": False,
    })  # fmt: skip
    audio, texts = tone_corpus(8, seed=0)
    result = codec_train.train(
        config, str(tmp_path), clips=audio, teacher_set=(audio, texts), progress=False
    )
    assert "loss/distill" not in result.metrics  # nothing to distil: the codes are given
    teacher = teacher_lib.load_teacher(config, str(tmp_path / "codec" / "teacher"))
    shutil.rmtree(tmp_path / "codec" / "teacher")
    codec, step = codec_train.restore_codec(config, str(tmp_path / "codec" / "checkpoints"))
    assert step == 2
    saved = lambda m: jax.tree.leaves(nnx.state(m, ctc.SAVED))  # noqa: E731
    for a, b in zip(saved(codec.teacher), saved(teacher), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    wav = jnp.asarray(audio[1][None])
    codes = np.asarray(codec.encode(wav))
    assert codes.shape == (1, 8, -(-len(audio[1]) // 320))
    np.testing.assert_array_equal(codes[:, 0], np.asarray(teacher.codes(wav)))
    assert codec.decode(jnp.asarray(codes)).shape == (1, codes.shape[-1] * 320)
    # Configs that cannot give RVQ-1 codes say what is missing.
    from gpa_jax.codec.model import Codec

    with pytest.raises(ValueError, match="ctc_vq_codes > 0"):
        Codec.from_config(teacher_config(**{"codec.quantizer": "teacher"}))
    with pytest.raises(ValueError, match="must equal codec.codebook_size"):
        Codec.from_config(
            teacher_config(**{"codec.quantizer": "teacher", "teacher.ctc_vq_codes": 16})
        )
    with pytest.raises(ValueError, match="teacher.kind='ctc'"):
        Codec.from_config(tiny_config(**{"codec.quantizer": "teacher"}))


def test_forced_alignment_puts_each_letter_on_its_own_tone(trained):
    """Letter i of a tone utterance sounds from 0.16 i s for 0.12 s: the trained teacher's
    forced alignment gives its frames (50 Hz) there, and the linear guide's centre, on
    such evenly timed speech, is within a character of it."""
    import jax

    from gpa_jax.evaluation.alignment import linear_guide_deviation

    config, directory, _ = trained
    model = teacher_lib.load_teacher(config, directory)
    audio, texts = tone_corpus(6, seed=11)
    for logits, text in zip(teacher_lib.waveform_logits(model, audio), texts, strict=True):
        labels = ctc.text_to_ids(text)
        alignment = ctc.forced_alignment(np.asarray(jax.nn.log_softmax(logits, -1)), labels)
        assert len(alignment) == len(logits) and set(alignment[alignment >= 0]) == set(range(len(text)))
        for i in range(len(text)):
            frames = np.flatnonzero(alignment == i)
            assert 8 * i - 2 <= frames.min() and frames.max() <= 8 * i + 8, (text, i, frames)
    report = linear_guide_deviation(model, audio, texts)
    assert report["utterances"] == 6 and report["chars_mean"] < 1.0, report
