"""The acoustic transformer: voice prompt + known RVQ layers -> the next layer (or the latent).

One row of a batch is `[prompt frames][target frames][padding]` (`prompt_mask` marks the
prompt, `decoder_segment_ids` > 0 the real frames). Input embedding per frame: the sum of
per-layer code embeddings over the layers that frame may show (`known_layers`):

    prompt frame   all n_q layers of the reference clip (another utterance of the speaker)
    target frame   layers 0..k-1 (RVQ-1..k); layers >= k are never read, so the target's
                   own codes of the layer being predicted (and above) cannot leak in
    padding        nothing

plus a learned prompt/target type embedding. Attention is bidirectional over the real
frames of the row (`make_attention_mask` with the whole row as prefix). The stage is
given by adaptive layer norm: every block's two pre-norms are modulated by
shift/scale vectors projected from an embedding of the stage id (DiT-style adaLN), and so
is the final norm. Stage ids: k in 1..n_q-1 = "predict RVQ layer k (0-based)" for the NAR
variant; 0 = "predict the summed latent" for the vocoder (which sees RVQ-1 only, k = 1).

Heads: NAR -> logits over the codebook of layer k (one [embed, codebook] head per layer,
chosen per row by its stage); vocoder -> the codec latent [D] per frame, regressed onto
sum_l codebook_l[code_l] (the codec's quantized latent, the input of its decoder), with the
frozen codebooks held in the model as a non-trainable `CodecCodebooks` variable.

Built from the LM's blocks (`gpa_jax.models.layers`: RMSNorm, Attention with RoPE/GQA/QK-norm,
SwiGLU MLP, Embedder, DenseGeneral) and carrying the same logical axis names, so the
config's sharding rules shard it like the LM.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.acoustic.config import AcousticConfig
from gpa_jax.models.layers import (
    MLP,
    Attention,
    DenseGeneral,
    Embedder,
    RMSNorm,
    dropout,
    make_attention_mask,
    partitioned,
    to_dtype,
)
from gpa_jax.sharding import normalize_rules, with_logical_constraint

_ACTIVATION = ("batch", "length", "embed")
VOCODER_STAGE = 0


class CodecCodebooks(nnx.Variable):
    """The frozen codec's RVQ codebooks [n_q, codebook_size, D] (never trained)."""


def _modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
    """adaLN: x * (1 + scale) + shift, with shift/scale [b, embed] broadcast over length."""
    return x * (1.0 + scale[:, None, :].astype(x.dtype)) + shift[:, None, :].astype(x.dtype)


class AdaLNBlock(nnx.Module):
    """Pre-norm transformer block whose norms are modulated by the stage condition."""

    def __init__(self, cfg: AcousticConfig, *, rngs: nnx.Rngs, rules: Any = None):
        self.cfg = cfg
        self.rules = rules
        e = cfg.embed_dim
        norm_kw = dict(eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.pre_attn_norm = RMSNorm(e, **norm_kw)
        self.attn = Attention(cfg, rngs=rngs, rules=rules)
        self.pre_mlp_norm = RMSNorm(e, **norm_kw)
        self.mlp = MLP(cfg, rngs=rngs, rules=rules)
        # cond [b, embed] -> (shift, scale) for the attention and MLP norms.
        self.modulation = DenseGeneral(
            (e,), (4, e), ("embed", None, "norm"), rngs=rngs,
            dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        )  # fmt: skip

    def __call__(self, x, cond, positions, mask, dropout_key=None):
        attn_key = mlp_key = None
        if dropout_key is not None:
            attn_key, mlp_key = jax.random.split(dropout_key)
        shift_a, scale_a, shift_m, scale_m = jnp.moveaxis(self.modulation(cond), 1, 0)
        h = self.attn(_modulate(self.pre_attn_norm(x), shift_a, scale_a), positions, mask)
        x = x + dropout(h, self.cfg.dropout_rate, attn_key)
        h = self.mlp(_modulate(self.pre_mlp_norm(x), shift_m, scale_m))
        x = x + dropout(h, self.cfg.dropout_rate, mlp_key)
        return with_logical_constraint(x, _ACTIVATION, self.rules)


def _block_caller(remat_policy: str, prevent_cse: bool) -> Callable[..., jax.Array]:
    def call(block, x, cond, positions, mask, key):
        return block(x, cond, positions, mask, key)

    if remat_policy == "none":
        return call
    policy = None if remat_policy == "full" else getattr(jax.checkpoint_policies, remat_policy)
    return nnx.remat(call, policy=policy, prevent_cse=prevent_cse)


def known_layers(
    stage: jax.Array, prompt_mask: jax.Array, segment_ids: jax.Array, n_q: int
) -> jax.Array:
    """float32 [b, l, n_q]: 1 where a frame's layer enters the input (module docstring).

    stage: [b] stage ids; the number of known target layers is max(stage, 1).
    """
    num_known = jnp.maximum(stage, 1)[:, None, None]  # [b, 1, 1]
    layer = jnp.arange(n_q)[None, None, :]
    prompt = prompt_mask.astype(bool)[..., None]
    target = (segment_ids > 0)[..., None] & ~prompt
    return (prompt | (target & (layer < num_known))).astype(jnp.float32)


def row_stage(stage: jax.Array) -> jax.Array:
    """[b, l] per-frame stage ids (constant on a row's frames, 0 on padding) -> [b]."""
    return jnp.max(stage, axis=1) if stage.ndim == 2 else stage


class AcousticModel(nnx.Module):
    """NAR RVQ-layer predictor or one-step vocoder (module docstring), one backbone."""

    def __init__(
        self,
        cfg: AcousticConfig,
        *,
        rngs: nnx.Rngs,
        sharding_rules: Any = None,
        codebooks: np.ndarray | None = None,
    ):
        rules = normalize_rules(sharding_rules)
        self.cfg = cfg
        self.rules = rules
        self.dtype = to_dtype(cfg.dtype)
        e, k, n_q = cfg.embed_dim, cfg.codebook_size, cfg.n_q
        emb_kw = dict(init_std=cfg.init_std, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        # Layer l's code c is row l * codebook_size + c of one table.
        self.code_embed = Embedder(n_q * k, e, rngs=rngs, rules=rules, **emb_kw)
        self.type_embed = Embedder(2, e, rngs=rngs, rules=rules, **emb_kw)  # prompt, target
        self.stage_embed = Embedder(n_q, e, rngs=rngs, rules=rules, **emb_kw)
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
            def make_layers(layer_rngs: nnx.Rngs) -> AdaLNBlock:
                return AdaLNBlock(cfg, rngs=layer_rngs, rules=rules)

            self.layers = make_layers(rngs)
        else:
            self.layers = nnx.List(
                [AdaLNBlock(cfg, rngs=rngs, rules=rules) for _ in range(cfg.num_layers)]
            )
        self.final_norm = RMSNorm(e, eps=cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)
        self.final_modulation = DenseGeneral(
            (e,), (2, e), ("embed", None, "norm"), rngs=rngs,
            dtype=cfg.dtype, param_dtype=cfg.param_dtype,
        )  # fmt: skip
        if cfg.variant == "nar":
            init = partitioned(nnx.initializers.normal(cfg.init_std), (None, "embed", "vocab"))
            self.heads = nnx.Param(init(rngs.params(), (n_q, e, k), to_dtype(cfg.param_dtype)))
            self.latent_head = None
            self.codebooks = None
        else:
            self.heads = None
            self.latent_head = DenseGeneral(
                (e,), (cfg.latent_dim,), ("embed", None), rngs=rngs,
                dtype=cfg.dtype, param_dtype=cfg.param_dtype, out_dtype="float32",
            )  # fmt: skip
            shape = (n_q, k, cfg.latent_dim)
            if codebooks is None:
                raise ValueError(
                    "the vocoder variant needs the codec's codebooks [n_q, codebook_size, D] "
                    "(config.codec: its config file and checkpoint directory)"
                )
            codebooks = np.asarray(codebooks, np.float32)
            if codebooks.shape != shape:
                raise ValueError(
                    f"codec codebooks have shape {codebooks.shape}; model.n_q, "
                    f"model.codebook_size, model.latent_dim say {shape}"
                )
            self.codebooks = CodecCodebooks(jnp.asarray(codebooks))

    # --- backbone ---------------------------------------------------------------------------

    def embed_inputs(
        self, codes: jax.Array, stage: jax.Array, prompt_mask: jax.Array, segment_ids: jax.Array
    ) -> jax.Array:
        """[b, l, embed]: summed embeddings of the known layers + prompt/target type."""
        cfg = self.cfg
        offsets = jnp.arange(cfg.n_q, dtype=jnp.int32) * cfg.codebook_size
        known = known_layers(stage, prompt_mask, segment_ids, cfg.n_q)
        # Unknown layers are looked up as code 0 and weighted 0: their values never matter.
        ids = jnp.where(known > 0, codes.astype(jnp.int32), 0) + offsets
        emb = self.code_embed(ids.reshape(ids.shape[0], -1)).reshape(*ids.shape, -1)
        x = jnp.einsum("blqe,blq->ble", emb, known.astype(emb.dtype))
        is_target = ((segment_ids > 0) & ~prompt_mask.astype(bool)).astype(jnp.int32)
        x = x + self.type_embed(is_target) * (segment_ids > 0)[..., None].astype(x.dtype)
        return with_logical_constraint(x, _ACTIVATION, self.rules)

    def hidden(
        self,
        codes: jax.Array,
        stage: jax.Array,
        prompt_mask: jax.Array,
        segment_ids: jax.Array,
        positions: jax.Array | None = None,
        *,
        dropout_key: jax.Array | None = None,
    ) -> jax.Array:
        """codes int [b, l, n_q]; stage [b] or [b, l]; prompt_mask, segment_ids [b, l].
        Returns the final (modulated) hidden states [b, l, embed]."""
        cfg = self.cfg
        stage = row_stage(stage).astype(jnp.int32)
        batch, length = segment_ids.shape
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
        x = self.embed_inputs(codes, stage, prompt_mask, segment_ids)
        cond = jax.nn.silu(self.stage_embed(stage[:, None])[:, 0])  # [b, embed]
        # Bidirectional over the row's real frames: the whole row is the prefix.
        mask = make_attention_mask(segment_ids, segment_ids > 0)
        keys = None
        if dropout_key is not None and cfg.dropout_rate > 0.0:
            keys = jax.random.split(dropout_key, cfg.num_layers)
        call = _block_caller(cfg.remat_policy, prevent_cse=not cfg.scan_layers)
        if cfg.scan_layers:
            key_axis = None if keys is None else 0

            @nnx.scan(in_axes=(nnx.Carry, 0, None, None, None, key_axis), out_axes=nnx.Carry)
            def run(h, block, cond, positions, mask, key):
                return call(block, h, cond, positions, mask, key)

            x = run(x, self.layers, cond, positions, mask, keys)
        else:
            for i, block in enumerate(self.layers):
                x = call(block, x, cond, positions, mask, None if keys is None else keys[i])
        shift, scale = jnp.moveaxis(self.final_modulation(cond), 1, 0)
        return _modulate(self.final_norm(x), shift, scale)

    # --- heads ------------------------------------------------------------------------------

    def stage_logits(self, h: jax.Array, stage: jax.Array) -> jax.Array:
        """NAR: float32 logits [b, l, codebook_size] over RVQ layer `stage` (per row)."""
        if self.heads is None:
            raise ValueError("stage_logits needs model.variant='nar'")
        head = self.heads[...][row_stage(stage).astype(jnp.int32)].astype(self.dtype)
        out = jnp.einsum(
            "ble,bek->blk", h.astype(self.dtype), head, preferred_element_type=jnp.float32
        )
        return with_logical_constraint(out, ("batch", "length", "vocab"), self.rules)

    def latent(self, h: jax.Array) -> jax.Array:
        """Vocoder: float32 predicted codec latent [b, l, D]."""
        if self.latent_head is None:
            raise ValueError("latent needs model.variant='vocoder'")
        return self.latent_head(h)

    def target_latent(self, codes: jax.Array) -> jax.Array:
        """sum_l codebook_l[codes[..., l]]: the codec's quantized latent [b, l, D] (float32)."""
        if self.codebooks is None:
            raise ValueError("target_latent needs model.variant='vocoder'")
        books = jax.lax.stop_gradient(self.codebooks[...])
        n_q = books.shape[0]
        gathered = jax.vmap(lambda book, c: book[c], in_axes=(0, -1), out_axes=0)(
            books, codes.astype(jnp.int32)[..., :n_q]
        )
        return jnp.sum(gathered, axis=0)

    def __call__(self, batch: dict[str, jax.Array], *, dropout_key: jax.Array | None = None):
        """The head output on a trainer batch: NAR logits or vocoder latents."""
        stage = batch["stage"]
        if self.cfg.variant == "vocoder":
            stage = jnp.zeros_like(stage)
        h = self.hidden(
            batch["codes"],
            stage,
            batch["prompt_mask"],
            batch["decoder_segment_ids"],
            batch.get("decoder_positions"),
            dropout_key=dropout_key,
        )
        return self.stage_logits(h, stage) if self.cfg.variant == "nar" else self.latent(h)


def make_acoustic_model(
    cfg: AcousticConfig,
    *,
    rngs: nnx.Rngs,
    sharding_rules: Any = None,
    codebooks: np.ndarray | None = None,
) -> AcousticModel:
    return AcousticModel(cfg, rngs=rngs, sharding_rules=sharding_rules, codebooks=codebooks)
