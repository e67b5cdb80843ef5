"""The SE row of the evaluation on the smallest real chain (1-step codec, random 1-layer LM
and NAR stage, PocketSphinx judge): figures next to the noisy input's, skipped and said
for an LM trained without SE."""

import numpy as np
import pytest
import seqio
from flax import nnx

from tests.codec.conftest import tiny_workdir  # noqa: F401 (a fixture, used by name)

CORPUS = "synthetic_speech/tiny"


@pytest.fixture(scope="module")
def chain(tiny_workdir, tmp_path_factory):  # noqa: F811
    from gpa_jax import paths
    from gpa_jax.acoustic.api import AcousticStage
    from gpa_jax.acoustic.config import AcousticConfig
    from gpa_jax.acoustic.model import AcousticModel
    from gpa_jax.audio.noise import NoiseSettings
    from gpa_jax.codec import tokenization
    from gpa_jax.codec import train as codec_train
    from gpa_jax.evaluation import harness
    from gpa_jax.evaluation.judge import PocketSphinxJudge
    from gpa_jax.models import LMConfig, lm_model_config, mesh_config
    from gpa_jax.tasks.vocab import SpeechVocabulary
    from gpa_jax.training.config import lm_config
    from tests.models.helpers import numpy_model

    config, workdir = tiny_workdir
    codec, _ = codec_train.restore_codec(config, codec_train.checkpoint_dir(workdir))
    token_dir = str(tmp_path_factory.mktemp("se_tokens"))
    tfds = paths.tfds_dir(workdir)
    tokenization.tokenize_corpus(codec, CORPUS, token_dir, data_dir=tfds, splits=["validation"],
                                 noise=NoiseSettings(seed=1), batch_size=8,
                                 bucket_frames=300, progress=False)  # fmt: skip
    vocab = SpeechVocabulary(seqio.ByteVocabulary(), num_audio_streams=codec.n_q,
                             codebook_size=codec.codebook_size)  # fmt: skip
    model = lm_model_config(vocab_size=vocab.vocab_size, num_layers=1, embed_dim=32, num_heads=2,
                            num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=1024, scan_layers=False)  # fmt: skip
    lm = lm_config(model=model, mesh=mesh_config(shape=(-1, 1, 1)))
    lm.tasks.rates.se = 0.2
    stage = AcousticStage(AcousticModel(AcousticConfig(
        n_q=codec.n_q, codebook_size=codec.codebook_size, latent_dim=64, num_layers=1,
        embed_dim=32, num_heads=2, num_kv_heads=1, head_dim=16, mlp_dim=64, max_len=128,
        scan_layers=False), rngs=nnx.Rngs(0)))  # fmt: skip
    params = numpy_model(LMConfig.from_config(lm.model))
    return dict(codec=codec, vocab=vocab, lm=lm, params=params, stage=stage, tfds=tfds,
                token_dir=token_dir, judge=PocketSphinxJudge(), harness=harness)  # fmt: skip


def _evaluate(chain, workdir, trained: bool):
    from gpa_jax.sampling import Sampler, sampling_config
    from gpa_jax.tasks.planning import PlanSettings

    lm = chain["lm"].copy_and_resolve_references()
    lm.tasks.rates.se = 0.2 if trained else 0.0
    sampler = Sampler(
        lm, chain["params"], chain["vocab"], sampling=sampling_config(max_total_len=1024)
    )
    models = chain["harness"].EvalModels(codec=chain["codec"], sampler=sampler,
                                         acoustic=chain["stage"], judge=chain["judge"])  # fmt: skip
    settings = PlanSettings(sequence_length=1024, ref_max_frames=50, ref_min_frames=10,
                            ref_layers=1, trim_ref_to_fit=True, noisy_inputs=True)  # fmt: skip
    return chain["harness"].evaluate_tasks(
        models, token_dir=chain["token_dir"], corpus=CORPUS, data_dir=chain["tfds"],
        split="validation", workdir=str(workdir), settings=settings, max_per_task=3,
        tasks=("se",), progress=False,
    )  # fmt: skip


def test_se_row_sets_the_output_beside_the_noisy_input(chain, tmp_path):
    from gpa_jax.codec.evaluate import stoi
    from gpa_jax.evaluation.results import read_manifest

    out = _evaluate(chain, tmp_path, trained=True)
    se = out["se"]
    assert se["examples"] == 3 and 0 <= se["snr_db_mean"] <= 15
    for key in ("judge_wer_noisy", "judge_wer_truth", "stoi_noisy", "mel_distance_noisy"):
        assert np.isfinite(se[key]), key
    if se["failed"] < 3:
        assert np.isfinite(se["stoi"]) and np.isfinite(se["mel_distance"]) and "judge_wer" in se
    rows = read_manifest(str(tmp_path / "samples" / "se" / "manifest.jsonl"))
    noisy = [r for r in rows if r["role"] == "noisy"]
    assert len(noisy) == 3 and all(0 <= r["snr_db"] <= 15 for r in noisy)
    # The noisy figures are those of the rebuilt noisy wav against the clean recording.
    data = chain["harness"].load_split(chain["token_dir"], chain["vocab"], CORPUS, "validation",
                                       chain["tfds"], chain["codec"].n_q, 320, 16000, noisy=True)  # fmt: skip
    u = data.bank.ids.index(noisy[0]["utterance"])
    (wav,) = chain["harness"].noisy_wavs(data, chain["token_dir"], "validation", [u])
    assert noisy[0]["stoi"] == pytest.approx(stoi(data.wav(u), wav, 16000))
    table = chain["harness"].results_sections(out)
    (title,) = [t for t in table if t.startswith("SE")]
    assert "noisy input" in table[title] and "enhanced" in table[title]


def test_se_is_skipped_and_said_for_an_lm_trained_without_it(chain, tmp_path):
    out = _evaluate(chain, tmp_path, trained=False)
    assert "not trained for se" in out["se"]["skipped"]
    assert not (tmp_path / "samples" / "se").exists()
    assert "se: skipped" in chain["harness"].results_sections(out)["Not evaluated"]
