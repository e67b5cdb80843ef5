"""Acoustic-stage evaluation (gpa_jax.evaluation.acoustic_stages) on a small random-init
codec: prompts, bounds, metrics, files. Beside the acoustic tests for their token corpus."""

import json
import os

import numpy as np
from flax import nnx

from gpa_jax.acoustic.api import AcousticStage, decode_latent, synthesize
from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.acoustic.data import load_code_bank
from gpa_jax.acoustic.kind import codec_codebooks
from gpa_jax.acoustic.model import AcousticModel
from gpa_jax.codec import api as codec_api
from gpa_jax.codec.config import codec_config
from gpa_jax.codec.model import Codec
from gpa_jax.evaluation import acoustic_stages as evaluate
from gpa_jax.evaluation import speaker

from .conftest import CODEBOOK, N_Q

CFG = dict(
    n_q=N_Q, codebook_size=CODEBOOK, latent_dim=16, num_layers=1, embed_dim=32, num_heads=2,
    num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=64, scan_layers=False,
)  # fmt: skip


def small_codec():
    config = codec_config(
        codec=dict(n_filters=4, dimension=16, lstm_layers=1, codebook_size=CODEBOOK, n_q=N_Q),
        teacher=dict(kind="none"),
    )
    return Codec.from_config(config, rngs=nnx.Rngs(0))


def test_pick_examples_prompts(token_corpus):
    directory, _ = token_corpus
    bank, prompts = load_code_bank(directory, "validation"), load_code_bank(directory, "train")
    picks = evaluate.pick_examples(bank, prompts, 6, 10, 20, seed=0)
    assert len(picks) == 6
    for ex in picks:
        assert ex["prompt_same_id"] != ex["id"]
        u, r = bank.index_of(ex["id"]), prompts.index_of(ex["prompt_same_id"])
        assert prompts.speakers[r] == ex["speaker"] and prompts.texts[r] != bank.texts[u]
        assert ex["other_speaker"] != ex["speaker"]
        assert ex["codes"].shape[1] <= 20 and ex["prompt_same"].shape == (N_Q, 10)


def test_evaluate_reports_bounds_and_stages(token_corpus, tmp_path):
    directory, _ = token_corpus
    codec = small_codec()
    bank, prompts = load_code_bank(directory, "validation"), load_code_bank(directory, "train")
    examples = evaluate.pick_examples(bank, prompts, 4, 10, 20, seed=0)
    nar = AcousticStage(AcousticModel(AcousticConfig(**CFG), rngs=nnx.Rngs(0)))
    voc_cfg = AcousticConfig(**CFG, variant="vocoder")
    voc = AcousticStage(AcousticModel(voc_cfg, rngs=nnx.Rngs(0), codebooks=codec_codebooks(codec)))
    # "Originals" = full resynthesis, so the upper bound's mel distance is exactly 0.
    originals = {
        ex["id"]: w
        for ex, w in zip(
            examples, codec_api.decode_batch(codec, [e["codes"] for e in examples]), strict=True
        )
    }
    spk_wavs = codec_api.decode_batch(
        codec, [prompts.utterance_codes(u) for u in range(len(prompts.ids))]
    )
    enc = speaker.make_speaker_encoder("mfcc", wavs=spk_wavs)
    table = speaker.centroids(enc, spk_wavs, prompts.speakers)
    result = evaluate.evaluate(
        {"nar": nar, "vocoder": voc}, codec, examples, originals, enc, table,
        sample_dir=str(tmp_path / "samples"), num_samples=1,
    )  # fmt: skip
    rows = result["systems"]
    assert set(rows) == {"upper (full codec)", "lower (RVQ-1 only)", "nar", "vocoder", "original"}
    assert rows["upper (full codec)"]["mel_distance"] < 1e-3
    assert rows["lower (RVQ-1 only)"]["mel_distance"] > 0.01
    assert result["bounds_informative"] and result["bounds_gap"] > 0
    for name in ("nar", "vocoder"):
        assert set(result["checks"][name]) == {
            "mel_between_bounds", "mel_better_than_lower", "sim_above_lower",
            "moves_towards_prompt_speaker",
        }  # fmt: skip
        assert np.isfinite(list(rows[name].values())).all()
    json.dumps(result, allow_nan=False)  # strict JSON (the launcher's last line)
    files = os.listdir(tmp_path / "samples")
    assert any(f.endswith("_nar.wav") for f in files) and any("_prompt-" in f for f in files)
    assert "| nar |" in evaluate.format_table(result)

    # The vocoder's latent goes through the codec decoder; an exact latent reproduces
    # the codes' decode (up to the last frames, where the two pad differently: zeros
    # after the latent, code-0 vectors after the codes).
    codes = examples[0]["codes"]
    books = codec_codebooks(codec)
    latent = sum(books[q][codes[q]] for q in range(N_Q))
    keep = (codes.shape[1] - 4) * codec.hop_length
    np.testing.assert_allclose(
        decode_latent(codec, latent)[:keep], codec_api.decode(codec, codes)[:keep], atol=1e-4
    )
    wavs = synthesize(voc, codec, [codes[0]], [examples[0]["prompt_same"]])
    assert wavs[0].shape == (codes.shape[1] * codec.hop_length,)
