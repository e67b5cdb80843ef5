"""launch.export on the chain the quick demo trains: HF's Qwen3ForCausalLM gives the demo
LM's logits on a real prompt of each task (trained weights, corpus utterances), and the
exported codec and acoustic stages decode and complete as the work dir's own do."""

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.serving.test_qwen3 import PARITY_ATOL, hf_logits, ours_logits

pytestmark = pytest.mark.slow


def check_demo_export(workdir: str, out: str) -> None:
    """Exports `workdir` (a demo's) into `out` with the command and compares (module doc)."""
    from gpa_jax.codec import api as codec_api
    from gpa_jax.evaluation import harness
    from gpa_jax.sampling import Request
    from gpa_jax.serving import export
    from gpa_jax.tasks import planning
    from gpa_jax.tasks.config import resolve_paths

    result = subprocess.run(
        [sys.executable, "-m", "launch.export", f"--workdir={workdir}", f"--out={out}",
         "--acoustic=nar,vocoder"],
        cwd=REPO, env={**os.environ, "XLA_FLAGS": ""}, capture_output=True, text=True,
        timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(out, "acoustic"))) == ["nar", "vocoder"]

    models = harness.load_models(workdir, speaker_encoder="")
    sampler, codec = models.sampler, models.codec
    token_dir = resolve_paths(sampler.config.tasks, workdir)[0]
    bank = planning.load_bank(token_dir, "train", sampler.vocab, layers=codec.n_q)
    codes = [bank.utterance_codes(u) for u in range(3)]
    requests = [Request.tts(bank.texts[0], codes[1]), Request.asr(codes[0]),
                Request.vc(codes[0], codes[2])]  # fmt: skip
    prompts = {r.task: sampler.prepare(r).prompt for r in requests}
    theirs, ours = hf_logits(out, prompts), ours_logits(sampler.model, prompts)
    for task in prompts:
        np.testing.assert_allclose(theirs[task], ours[task], rtol=0, atol=PARITY_ATOL, err_msg=task)

    loaded = export.load_codec(os.path.join(out, "codec"))
    np.testing.assert_array_equal(
        codec_api.decode(loaded, codes[0]), codec_api.decode(codec, codes[0])
    )
    stage = export.load_acoustic_stage(os.path.join(out, "acoustic", "nar"), codec=loaded)
    rvq1, prompt = codes[0][0], codes[1]
    np.testing.assert_allclose(stage.complete(rvq1, prompt), models.acoustic.complete(rvq1, prompt),
                               rtol=0, atol=1e-6)  # fmt: skip
    assert export.load_acoustic(os.path.join(out, "acoustic", "vocoder")).cfg.variant == "vocoder"


def test_demo_chain_exports_and_runs_outside_the_work_dir(quick_demo, tmp_path):
    pytest.importorskip("transformers")
    workdir, result = quick_demo
    assert result.returncode == 0
    check_demo_export(str(workdir), str(tmp_path / "export"))
