"""The GPA decoder-only LM: `Embedder` -> `DecoderStack` -> (tied) logits.

The embedder and the stack are separate on purpose: the stack (`gpa_jax.models.stack`)
consumes embeddings [batch, length, embed], so continuous audio features (LauraGPT) or
fused mel+token inputs (WHISPER-GPT) can be added at audio positions without touching
the transformer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from gpa_jax import sharding as sharding_lib
from gpa_jax.models.audio_encoder import AudioEncoder
from gpa_jax.models.config import LMConfig
from gpa_jax.models.layers import DenseGeneral, Embedder, RMSNorm, partitioned, to_dtype
from gpa_jax.models.stack import ACTIVATION_AXES, DecoderStack
from gpa_jax.sharding import normalize_rules, with_logical_constraint

# fold_in constant of the mel-dropout draw within the model's dropout key.
_MEL_DROPOUT_STREAM = 7


class HybridFusion(nnx.Module):
    """WHISPER-GPT's input: Linear(concat(mel representation, RMSNorm(token embedding))).

    The mel representation is the causal audio encoder's output where a recorded row is
    read (`audio_mask`), else a learned null row: text and control positions, the outputs
    being generated, and recorded rows dropped by mel dropout. Applying it at every
    position (not only at codec ids) keeps the model free of the vocabulary layout and
    makes a decode step, which never has a recorded row, read exactly what training
    showed it at output positions.
    """

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, rules: Any = None):
        self.rules = rules
        dims = dict(dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.token_norm = RMSNorm(cfg.embed_dim, eps=cfg.norm_eps, **dims)
        # The encoder's output is RMS-normed then projected: the null row starts at the
        # same scale (unit variance per element).
        init = partitioned(nnx.initializers.normal(1.0), ("embed",))
        self.null_mel = nnx.Param(init(rngs.params(), (cfg.embed_dim,), to_dtype(cfg.param_dtype)))
        # [mel, token] stacked on a size-2 axis: the same map as concat + Linear.
        self.proj = DenseGeneral(
            (2, cfg.embed_dim), (cfg.embed_dim,), (None, "embed", None), rngs=rngs, **dims
        )

    def __call__(
        self, embeddings: jax.Array, mel: jax.Array | None, mask: jax.Array | None
    ) -> jax.Array:
        """embeddings [b, l, embed]; mel [b, l, embed] read where mask [b, l] is nonzero
        (None: nowhere, a decode step) -> fused inputs [b, l, embed]."""
        null = jnp.broadcast_to(self.null_mel[...].astype(embeddings.dtype), embeddings.shape)
        if mel is not None:
            null = jnp.where(mask[..., None] > 0, mel.astype(embeddings.dtype), null)
        x = jnp.stack([null, self.token_norm(embeddings)], axis=-2)
        return with_logical_constraint(self.proj(x), ACTIVATION_AXES, self.rules)


class DecoderLM(nnx.Module):
    """Token ids (+ optional extra input embeddings) -> float32 logits [b, l, vocab]."""

    def __init__(self, cfg: LMConfig, *, rngs: nnx.Rngs, sharding_rules: Any = None):
        rules = normalize_rules(sharding_rules)
        self.cfg = cfg
        self.rules = rules
        self.embedder = Embedder(
            cfg.vocab_size,
            cfg.embed_dim,
            rngs=rngs,
            init_std=cfg.init_std,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            rules=rules,
        )
        self.decoder = DecoderStack(cfg, rngs=rngs, rules=rules)
        self.audio_encoder = (
            AudioEncoder(cfg, rngs=rngs, rules=rules, causal=cfg.audio_input == "hybrid")
            if cfg.audio_input != "tokens"
            else None
        )
        self.fusion = (
            HybridFusion(cfg, rngs=rngs, rules=rules) if cfg.audio_input == "hybrid" else None
        )
        if cfg.tie_embeddings:
            self.lm_head = None
        else:
            self.lm_head = DenseGeneral(
                (cfg.embed_dim,),
                (cfg.vocab_size,),
                ("embed", "vocab"),
                rngs=rngs,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                out_dtype="float32",
            )
        # The auxiliary ASR CTC's own map in front of the output table (config.ctc_weight),
        # made last so that the other parameters draw the same init with it or without.
        self.ctc_proj = (
            DenseGeneral(
                (cfg.embed_dim,), (cfg.embed_dim,), ("embed", None), rngs=rngs,
                dtype=cfg.dtype, param_dtype=cfg.param_dtype,
            )  # fmt: skip
            if cfg.ctc_weight > 0
            else None
        )

    def logits(self, h: jax.Array, rows: int | None = None) -> jax.Array:
        """Final hidden states -> float32 logits (tied table or separate head); over the
        vocabulary's first `rows` ids only when given."""
        if self.lm_head is None:
            return self.embedder.logits(h, rows)
        if rows is None:
            out = self.lm_head(h)
        else:
            kernel = self.lm_head.kernel[...][:, :rows].astype(self.cfg.dtype)
            out = jnp.einsum("bld,dv->blv", h.astype(self.cfg.dtype), kernel,
                             preferred_element_type=jnp.float32)  # fmt: skip
        return with_logical_constraint(out, ("batch", "length", "vocab"), self.rules)

    def ctc_logits(self, h: jax.Array) -> jax.Array:
        """Final hidden states [b, l, embed] -> float32 CTC logits [b, l, n] (blank =
        <pad>) of the auxiliary ASR CTC (cfg.ctc_weight > 0), over the vocabulary's first
        n = cfg.ctc_classes ids (all of them when it is 0 or covers the vocabulary),
        through the output table."""
        if self.ctc_proj is None:
            raise ValueError("ctc_logits needs model.ctc_weight > 0 (the CTC projection)")
        n = self.cfg.ctc_classes
        return self.logits(self.ctc_proj(h), n if 0 < n < self.cfg.vocab_size else None)

    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        prefix_mask: jax.Array | None = None,
        *,
        deterministic: bool = True,
        rngs: nnx.Rngs | jax.Array | None = None,
        extra_embeddings: jax.Array | None = None,
        input_embeddings_fn: Callable[[jax.Array], jax.Array] | None = None,
        guide: tuple[jax.Array, jax.Array] | None = None,
        audio_features: jax.Array | None = None,
        audio_mask: jax.Array | None = None,
        return_hidden: bool = False,
    ) -> jax.Array | tuple[jax.Array, ...]:
        """Logits for `tokens` [b, l]; with `guide` (band, query rows: see
        `gpa_jax.training.attention_guide`) returns (logits, guided-attention penalty);
        `return_hidden` appends the final hidden states [b, l, embed] to what is returned
        (the auxiliary CTC reads them).

        audio_features [b, l, F] / audio_mask [b, l]: the recorded audio rows, aligned
          with `tokens` (required iff cfg.audio_input is "continuous" or "hybrid"; see
          `embed`).
        extra_embeddings: [b, l, embed] added to the token embeddings (zeros where there
          is nothing to add), e.g. projected continuous audio features.
        input_embeddings_fn: embeddings -> embeddings hook applied after that, for
          fusions that are not a plain sum.
        rngs: an `nnx.Rngs` (its 'dropout' stream is used) or a key; needed only when
          `deterministic=False` and `cfg.needs_train_rng()`.
        """
        dropout_key = None
        if not deterministic and self.cfg.needs_train_rng():
            if rngs is None:
                raise ValueError(
                    "dropout_rate > 0 (or the hybrid variant's mel_dropout > 0) with "
                    "deterministic=False needs rngs"
                )
            dropout_key = rngs.dropout() if isinstance(rngs, nnx.Rngs) else rngs
        segment_ids, positions = _default_layout(tokens, segment_ids, positions)
        encoder_key = decoder_key = mel_key = dropout_key
        if dropout_key is not None and self.audio_encoder is not None:
            encoder_key, decoder_key = jax.random.split(dropout_key)
        if dropout_key is not None and self.fusion is not None:
            # Its own stream: the other variants' dropout draws stay what they were.
            mel_key = jax.random.fold_in(dropout_key, _MEL_DROPOUT_STREAM)
        x = self.embed(
            tokens, extra_embeddings, audio_features=audio_features, audio_mask=audio_mask,
            segment_ids=segment_ids, positions=positions, dropout_key=encoder_key,
            mel_dropout_key=mel_key,
        )  # fmt: skip
        if input_embeddings_fn is not None:
            x = input_embeddings_fn(x)
        h = self.decoder(x, segment_ids, positions, prefix_mask, dropout_key=decoder_key, guide=guide)
        out: tuple[jax.Array, ...] = ()
        if guide is not None:
            h, penalty = h
            out = (penalty,)
        if return_hidden:
            out = (*out, h)
        return (self.logits(h), *out) if out else self.logits(h)

    # --- KV-cache inference (gpa_jax.sampling drives these) -------------------------------

    def embed(
        self,
        tokens: jax.Array,
        extra_embeddings: jax.Array | None = None,
        *,
        audio_features: jax.Array | None = None,
        audio_mask: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        positions: jax.Array | None = None,
        dropout_key: jax.Array | None = None,
        mel_dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """Input embeddings [b, l, embed]: the token table, plus `extra_embeddings`; in the
        continuous variant the audio encoder's output replaces them where `audio_mask` is
        set (the codec ids there are placeholders the model never reads); in the hybrid
        variant `HybridFusion` joins it with the token embedding at every position.

        mel_dropout_key (hybrid, training): drops recorded rows with probability
        cfg.mel_dropout before the encoder reads them (None: no mel dropout)."""
        x = self.embedder(tokens)
        if self.audio_encoder is None:
            return _plus(x, extra_embeddings)
        if audio_features is None or audio_mask is None:
            raise ValueError(
                f"model.audio_input={self.cfg.audio_input!r} reads log-mel rows at the audio "
                "input positions: pass audio_features [b, l, F] and audio_mask [b, l] (the "
                "batch keys decoder_audio_features / decoder_audio_mask, made by the task "
                "data from token shards written with data.token_features='log_mel')"
            )
        segment_ids, positions = _default_layout(tokens, segment_ids, positions)
        if self.fusion is not None and mel_dropout_key is not None and self.cfg.mel_dropout > 0:
            drop = jax.random.bernoulli(mel_dropout_key, self.cfg.mel_dropout, audio_mask.shape)
            audio_mask = jnp.where(drop, 0, audio_mask)
        audio = self.audio_encoder(
            audio_features, audio_mask, segment_ids, positions, dropout_key=dropout_key
        )
        if self.fusion is not None:
            return _plus(self.fusion(x, audio, audio_mask), extra_embeddings)
        x = _plus(x, extra_embeddings)
        return jnp.where(audio_mask[..., None] > 0, audio.astype(x.dtype), x)

    def prefill(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array,
        prefix_mask: jax.Array | None,
        cache_length: int,
        *,
        cache_dtype: Any = None,
        extra_embeddings: jax.Array | None = None,
        audio_features: jax.Array | None = None,
        audio_mask: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """Prompts [b, l] -> (final hidden states [b, l, embed], KV cache of `cache_length`).

        Take logits where needed with `self.logits(h[:, i:i+1])` (only the last prompt
        position is needed to start decoding). Padding has segment id 0. The continuous
        and hybrid variants' recorded audio inputs all lie in the prompt, so only prefill
        reads them.
        """
        x = self.embed(
            tokens, extra_embeddings, audio_features=audio_features, audio_mask=audio_mask,
            segment_ids=segment_ids, positions=positions,
        )  # fmt: skip
        return self.decoder.prefill(
            x, segment_ids, positions, prefix_mask, cache_length, cache_dtype
        )

    def decode_step(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        kv_mask: jax.Array,
        cache: dict[str, Any],
        index: jax.Array,
        *,
        extra_embeddings: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, Any]]:
        """tokens/positions [b, t] written at cache slots index.. -> (logits [b, t, vocab], cache).

        Generated positions are outputs, never recorded audio inputs: only the token table
        is read (in the hybrid variant fused with the null row, as in training)."""
        x = self.embedder(tokens)
        if self.fusion is not None:
            x = self.fusion(x, None, None)
        x = _plus(x, extra_embeddings)
        h, cache = self.decoder.decode(x, positions, kv_mask, cache, index)
        return self.logits(h), cache


def _plus(x: jax.Array, extra: jax.Array | None) -> jax.Array:
    return x if extra is None else x + extra.astype(x.dtype)


def _default_layout(
    tokens: jax.Array, segment_ids: jax.Array | None, positions: jax.Array | None
) -> tuple[jax.Array, jax.Array]:
    """segment_ids / positions, defaulting to one segment per row at positions 0..l-1."""
    batch, length = tokens.shape[:2]
    if segment_ids is None:
        segment_ids = jnp.ones((batch, length), jnp.int32)
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return segment_ids, positions


def make_lm(
    config: ml_collections.ConfigDict | LMConfig, *, rngs: nnx.Rngs, sharding_rules: Any = None
) -> DecoderLM:
    """A DecoderLM from a top-level LM config (uses its `model` and `sharding_rules`),
    a `config.model` section, or an LMConfig."""
    if isinstance(config, LMConfig):
        cfg = config
    elif "model" in config:
        cfg = LMConfig.from_config(config.model)
        if sharding_rules is None:
            sharding_rules = config.get("sharding_rules")
    else:
        cfg = LMConfig.from_config(config)
    return DecoderLM(cfg, rngs=rngs, sharding_rules=sharding_rules)


def create_sharded_model(config: Any, mesh: Mesh, rngs: nnx.Rngs | int | jax.Array | None = None):
    """A `DecoderLM` from `config` (top-level LM config), its params sharded over `mesh`.

    `rngs` may be an `nnx.Rngs` (its `params` stream is drawn once, eagerly), an int seed
    or a key; it defaults to `config.seed`.
    """
    if rngs is None:
        rngs = int(config.seed)
    if isinstance(rngs, nnx.Rngs):
        key = rngs.params()
    elif isinstance(rngs, int):
        key = jax.random.key(rngs)
    else:
        key = rngs
    return sharding_lib.create_sharded(
        lambda: make_lm(config, rngs=nnx.Rngs(params=key)), mesh, config.sharding_rules
    )


def count_params(config: Any) -> int:
    """Number of model parameters (nnx.Param elements) via eval_shape; allocates nothing."""
    abstract = nnx.eval_shape(lambda: make_lm(config, rngs=nnx.Rngs(0)))
    params = nnx.state(abstract, nnx.Param)
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params))
