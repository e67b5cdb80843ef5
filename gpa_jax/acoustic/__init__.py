"""The acoustic stage: RVQ-1 tokens + a voice prompt -> the full codec code stack (or latent).

    config     AcousticConfig and the `kind='acoustic'` config builders
    model      AcousticModel: adaLN transformer, NAR (RVQ-2..N) or one-step vocoder heads
    data       SeqIO task of (prompt, target) code pairs over the token shards; trainer rows
    kind       the trainer hook (gpa_jax.training.model_kinds): factory, losses, iterators
    api        AcousticStage.complete(rvq1_tokens, prompt_codes) for the sampler, synthesis
    recipe     stage_config / train_stage: the calls the demo makes

Train with `python -m launch.train --config=configs/acoustic_nar_tiny.py` (or
`configs/acoustic_vocoder_tiny.py`); evaluate with `python -m launch.eval_acoustic`
(gpa_jax.evaluation.acoustic_stages: bounds-vs-stage mel distance and speaker similarity,
above this package: it scores with gpa_jax.evaluation.speaker).
"""
