"""The LM as a Hugging Face Qwen3 model: the one name and layout mapping, both directions.

Our DecoderLM computes the function of `transformers.Qwen3ForCausalLM` (pre-norm blocks,
RMSNorm, GQA with per-head QK-norm, split-halves RoPE, SwiGLU, optionally tied
embeddings), so its parameters map one to one onto HF's state dict:

    ours (nnx path, unrolled: decoder.layers.<i>.*)     HF name
    embedder.embedding            [V, E]                 model.embed_tokens.weight  [V, E]
    decoder.final_norm.scale      [E]                    model.norm.weight
    lm_head.kernel (untied only)  [E, V]                 lm_head.weight             [V, E]
    attn.q_proj.kernel            [E, H, D]              self_attn.q_proj.weight    [H*D, E]
    attn.k_proj / v_proj.kernel   [E, KV, D]             self_attn.k_proj / v_proj  [KV*D, E]
    attn.o_proj.kernel            [H, D, E]              self_attn.o_proj.weight    [E, H*D]
    attn.q_norm / k_norm.scale    [D]                    self_attn.q_norm / k_norm.weight
    pre_attn_norm.scale                                  input_layernorm.weight
    pre_mlp_norm.scale                                   post_attention_layernorm.weight
    mlp.gate_proj / up_proj.kernel [E, M]                mlp.gate_proj / up_proj.weight [M, E]
    mlp.down_proj.kernel          [M, E]                 mlp.down_proj.weight       [E, M]

A kernel [in..., out...] is HF's nn.Linear weight [prod(out), prod(in)] transposed. With
`scan_layers` the block params are stacked on a leading layers axis; layer i is row i.

What Qwen3 cannot express is refused (`check_exportable`): continuous audio inputs (an
audio encoder reading log-mel rows), a bidirectional prompt prefix (Qwen3 is causal
throughout), and attention without QK-norm (Qwen3 always normalises q and k). Nothing
here imports torch: the export runs where the JAX model lives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from flax import nnx

from gpa_jax.errors import UserError
from gpa_jax.models.config import LMConfig
from gpa_jax.tasks.vocab import EOS_ID, PAD_ID

# (HF name inside layer i, our path inside a DecoderBlock, input dims of the kernel; None:
# the tensor is copied as it is).
_BLOCK_TENSORS: tuple[tuple[str, tuple[str, ...], int | None], ...] = (
    ("self_attn.q_proj.weight", ("attn", "q_proj", "kernel"), 1),
    ("self_attn.k_proj.weight", ("attn", "k_proj", "kernel"), 1),
    ("self_attn.v_proj.weight", ("attn", "v_proj", "kernel"), 1),
    ("self_attn.o_proj.weight", ("attn", "o_proj", "kernel"), 2),
    ("self_attn.q_norm.weight", ("attn", "q_norm", "scale"), None),
    ("self_attn.k_norm.weight", ("attn", "k_norm", "scale"), None),
    ("input_layernorm.weight", ("pre_attn_norm", "scale"), None),
    ("post_attention_layernorm.weight", ("pre_mlp_norm", "scale"), None),
    ("mlp.gate_proj.weight", ("mlp", "gate_proj", "kernel"), 1),
    ("mlp.up_proj.weight", ("mlp", "up_proj", "kernel"), 1),
    ("mlp.down_proj.weight", ("mlp", "down_proj", "kernel"), 1),
)
# The HF name of the output projection; absent from a tied checkpoint (HF ties it on load).
LM_HEAD = "lm_head.weight"

Path = tuple[Any, ...]


class ExportError(UserError, ValueError):
    """The model has a feature the Qwen3 architecture cannot represent (or a weight file
    does not match the model); the message names each one."""


def unsupported_features(cfg: LMConfig) -> list[str]:
    """Why `cfg`'s LM is not a Qwen3ForCausalLM, one reason per feature ([] = exportable)."""
    problems = []
    if cfg.audio_input != "tokens":
        problems.append(
            f"model.audio_input={cfg.audio_input!r}: its audio encoder reads log-mel rows, "
            "Qwen3 reads token ids only (export needs 'tokens')"
        )
    if cfg.prefix_bidirectional:
        problems.append(
            "model.prefix_bidirectional=True: the prompt attends bidirectionally, Qwen3 is "
            "causal at every position (export needs a causal prefix)"
        )
    if not cfg.qk_norm:
        problems.append("model.qk_norm=False: Qwen3 always RMS-normalises q and k per head")
    return problems


def check_exportable(cfg: LMConfig) -> None:
    """Raises one ExportError listing every feature Qwen3 cannot represent."""
    problems = unsupported_features(cfg)
    if problems:
        raise ExportError(
            "this LM cannot be written as a Qwen3ForCausalLM checkpoint: " + "; ".join(problems)
        )


def hf_config(cfg: LMConfig) -> dict[str, Any]:
    """config.json of the Qwen3ForCausalLM with `cfg`'s shape and numerics.

    RoPE's theta is given both as `rope_theta` (transformers 4.x, vLLM) and inside
    `rope_parameters` (transformers 5), so either reads it.
    """
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.embed_dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_len,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_theta": float(cfg.rope_theta),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_theta)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "max_window_layers": cfg.num_layers,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        # The prompt's first id is <pad> (PROMPT_START, seqio's BOS): there is no separate BOS.
        "bos_token_id": None,
        "eos_token_id": EOS_ID,
        "pad_token_id": PAD_ID,
        "torch_dtype": cfg.param_dtype,
    }


def _layer_paths(cfg: LMConfig) -> Iterator[tuple[str, Path, int | None, int | None]]:
    """(HF name, our param path, layer row of a stacked param or None, kernel input dims)."""
    yield "model.embed_tokens.weight", ("embedder", "embedding"), None, None
    yield "model.norm.weight", ("decoder", "final_norm", "scale"), None, None
    if not cfg.tie_embeddings:
        yield LM_HEAD, ("lm_head", "kernel"), None, 1
    for i in range(cfg.num_layers):
        for hf_name, inner, n_in in _BLOCK_TENSORS:
            name = f"model.layers.{i}.{hf_name}"
            if cfg.scan_layers:
                yield name, ("decoder", "layers", *inner), i, n_in
            else:
                yield name, ("decoder", "layers", i, *inner), None, n_in


def _to_hf(value: np.ndarray, n_in: int | None) -> np.ndarray:
    if n_in is None:
        return value
    rows = math.prod(value.shape[:n_in])
    return np.ascontiguousarray(value.reshape(rows, -1).T)


def _from_hf(weight: np.ndarray, n_in: int | None, shape: tuple[int, ...]) -> np.ndarray:
    if n_in is None:
        return weight.reshape(shape)
    return weight.T.reshape(shape)


def _flat_params(params: nnx.State | nnx.Module) -> dict[Path, Any]:
    state = nnx.state(params, nnx.Param) if isinstance(params, nnx.Module) else params
    return {tuple(path): var for path, var in nnx.to_flat_state(state)}


def _canonical(path: Path) -> Path:
    # nnx paths may hold list indices as ints or as their strings: compare as strings.
    return tuple(str(p) for p in path)


# Heads only training uses (the auxiliary ASR CTC's projection, model.ctc_weight): the LM
# they trained generates without them, so the export leaves them out by name.
TRAINING_ONLY = ("ctc_proj",)


def to_hf_state_dict(cfg: LMConfig, params: nnx.State | nnx.Module) -> dict[str, np.ndarray]:
    """HF Qwen3 tensors (host numpy, the params' own dtype) of a DecoderLM's params
    (`TRAINING_ONLY` heads left out)."""
    check_exportable(cfg)
    flat = {_canonical(p): v for p, v in _flat_params(params).items() if str(p[0]) not in TRAINING_ONLY}
    out: dict[str, np.ndarray] = {}
    for name, path, row, n_in in _layer_paths(cfg):
        value = np.asarray(flat[_canonical(path)][...])
        if row is not None:
            value = value[row]
        out[name] = _to_hf(value, n_in)
    used = {_canonical(path) for _, path, _, _ in _layer_paths(cfg)}
    unmapped = sorted(".".join(p) for p in flat if p not in used)
    if unmapped:  # a param Qwen3 has no place for must not be dropped silently
        raise ExportError(f"params with no Qwen3 counterpart: {unmapped}")
    return out


def load_hf_state_dict(model: nnx.Module, weights: Mapping[str, Any]) -> None:
    """Writes HF Qwen3 tensors (numpy or anything np.asarray takes) into a DecoderLM in
    place (abstract or not, unrolled or scanned layers), cast to each param's dtype."""
    cfg = model.cfg
    check_exportable(cfg)
    flat = {_canonical(p): v for p, v in _flat_params(model).items()}
    expected = {name for name, *_ in _layer_paths(cfg)}
    # A tied HF model's state_dict still lists lm_head.weight (the embedding table again).
    extra = sorted(set(weights) - expected - ({LM_HEAD} if cfg.tie_embeddings else set()))
    missing = sorted(expected - set(weights))
    if missing or extra:
        raise ExportError(
            f"Qwen3 weights do not fit this LM: missing {missing[:8]}, unexpected {extra[:8]}"
        )
    stacked: dict[Path, list[np.ndarray]] = {}
    for name, path, row, n_in in _layer_paths(cfg):
        var = flat[_canonical(path)]
        shape = tuple(var.shape[1:]) if row is not None else tuple(var.shape)
        value = _from_hf(np.asarray(weights[name], np.float32), n_in, shape)
        if row is None:
            var.set_value(np.asarray(value, var.dtype))
        else:
            stacked.setdefault(_canonical(path), []).append(value)
    for path, rows in stacked.items():
        var = flat[path]
        var.set_value(np.asarray(np.stack(rows), var.dtype))
