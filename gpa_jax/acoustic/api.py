"""numpy-in / numpy-out acoustic stage for the sampler: RVQ-1 tokens + prompt -> codes/latent.

    stage = AcousticStage.from_workdir(config, workdir)         # params-only restore
    latent = stage.complete(rvq1_tokens, prompt_codes)           # float32 [T, D]
    wav = decode_latent(codec, latent)                           # codec.decoder(latent)

    greedy = AcousticStage.from_workdir(nar_config, workdir, nar_decoding="greedy")
    codes = greedy.complete(rvq1_tokens, prompt_codes)           # int32 [n_q, T]
    wav = codec_api.decode(codec, codes)                         # the codec decoder

`synthesize(stage, codec, rvq1_tokens, prompt_codes)` does either in one call. Inputs:
rvq1_tokens int [T] (codes 0..codebook_size-1 of RVQ layer 1, i.e. the LM's audio tokens
minus their vocabulary offset) and prompt_codes int [n_q, P] (all RVQ layers of a reference
clip, `codec_api.encode` of it). Batched: pass lists; each item may have its own T and P.

How the NAR stage fills the stack: rows are [prompt][target] as in training; for k = 1 ..
n_q-1 the model predicts layer k of every target frame at once, writes the argmax code into
the row (as USLM's NAR) and moves on, so layer k sees the predicted layers 1..k-1. It
returns those codes (nar_decoding="greedy") or, by default, the expected latent under its
per-layer distributions (nar_decoding="expected"; NAR_DECODINGS says why). `stage.output`
is "codes" or "latent". The whole loop is one jitted `fori_loop`. Rows are padded to a multiple of `bucket_frames`
and the batch to the next power of two, so jit compiles once per (batch, bucket) shape.

The vocoder always returns the codec's latent (the sum of codebook vectors it predicts), which is
the input of the codec's SEANet decoder: `decode_latent` runs `codec.decoder` on it. It
can also be quantized back to codes with the codec's RVQ (`latent_to_codes`), which makes
it a drop-in for code-based consumers at the price of a re-quantization error.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from gpa_jax import paths
from gpa_jax.acoustic.model import VOCODER_STAGE, AcousticModel

DEFAULT_BUCKET_FRAMES = 25
# What the NAR stage outputs (`nar_decoding`):
#   "greedy"   codes int32 [n_q, T]: layer k's argmax code per frame (USLM).
#   "expected" the latent float32 [T, D] that is the expectation of the quantized latent
#              under the model: RVQ-1's code vector + sum over k of sum_c p_k(c) e_k(c),
#              the minimum-mean-squared-error estimate. It goes to the codec decoder as
#              the vocoder's latent does. Where the model is unsure of layer k the term
#              shrinks towards 0; a greedy code adds a full-size vector there, and no
#              code of a layer is near 0 (tiny codec: the smallest vector of each layer
#              is about half the median norm), so wrong codes move the spectrum further
#              than leaving the layer out (tiny codec, default corpus: greedy is worse
#              than RVQ-1-only decoding, the expectation is between the bounds; see
#              issue 5's note). Layer k+1 is conditioned on layer k's argmax code in both.
NAR_DECODINGS = ("greedy", "expected")
DEFAULT_NAR_DECODING = "expected"


def _bucket(n: int, size: int) -> int:
    return max(1, -(-n // size)) * size


@nnx.jit
def _fill_layers(model: AcousticModel, codes, prompt_mask, segment_ids):
    """Greedy codes: fills layers 1..n_q-1 of the target frames (module docstring)."""
    return _nar_loop(model, codes, prompt_mask, segment_ids, None)[0]


@nnx.jit
def _expected_latent(model: AcousticModel, codes, prompt_mask, segment_ids, codebooks):
    """The posterior-mean latent of the target frames [b, l, D] (NAR_DECODINGS)."""
    return _nar_loop(model, codes, prompt_mask, segment_ids, codebooks)[1]


def _nar_loop(model, codes, prompt_mask, segment_ids, codebooks):
    """Layer k = 1..n_q-1 in turn: predict it for every target frame, write the argmax code
    into the row (layer k+1 sees it, as in training) and, given the codebooks, add the
    posterior mean of layer k's code vectors to the latent (RVQ-1's vector to start)."""
    n_q = model.cfg.n_q
    target = (segment_ids > 0) & ~prompt_mask.astype(bool)
    layer = jnp.arange(n_q)[None, None, :]
    latent = None if codebooks is None else codebooks[0][codes[..., 0]]

    def step(k, carry):
        codes, latent = carry
        stage = jnp.full(codes.shape[:1], k, jnp.int32)
        logits = model.stage_logits(model.hidden(codes, stage, prompt_mask, segment_ids), stage)
        pred = jnp.argmax(logits, axis=-1).astype(codes.dtype)
        codes = jnp.where((layer == k) & target[..., None], pred[..., None], codes)
        if latent is not None:
            latent = latent + jax.nn.softmax(logits, axis=-1) @ codebooks[k]
        return codes, latent

    return jax.lax.fori_loop(1, n_q, step, (codes, latent))


@nnx.jit
def _vocoder_latent(model: AcousticModel, codes, prompt_mask, segment_ids):
    stage = jnp.full(codes.shape[:1], VOCODER_STAGE, jnp.int32)
    return model.latent(model.hidden(codes, stage, prompt_mask, segment_ids))


class AcousticStage:
    """A trained AcousticModel behind the `complete(rvq1_tokens, prompt_codes)` interface."""

    def __init__(
        self,
        model: AcousticModel,
        *,
        bucket_frames: int = DEFAULT_BUCKET_FRAMES,
        prompt_frames: int | None = None,
        chunk_frames: int | None = None,
        nar_decoding: str = "greedy",
        codebooks: np.ndarray | None = None,
    ):
        """prompt_frames / chunk_frames: the prompt and target lengths the model was trained
        on (data.prompt_max_frames / target_max_frames; `from_workdir` reads them). Longer
        prompts keep their first prompt_frames frames; longer targets are completed in
        consecutive chunks of chunk_frames, each with the same prompt, and joined.

        nar_decoding (NAR only): NAR_DECODINGS; "expected" needs the codec's `codebooks`
        [n_q, codebook_size, D] (`from_workdir` loads them). `output` says what
        `complete` returns: "codes" (NAR, greedy) or "latent" (vocoder; NAR, expected)."""
        if nar_decoding not in NAR_DECODINGS:
            raise ValueError(f"nar_decoding {nar_decoding!r} is not one of {sorted(NAR_DECODINGS)}")
        if model.cfg.variant == "nar" and nar_decoding == "expected":
            shape = (model.cfg.n_q, model.cfg.codebook_size, model.cfg.latent_dim)
            if codebooks is None or np.shape(codebooks) != shape:
                raise ValueError(
                    f"nar_decoding='expected' needs the codec's codebooks of shape {shape}, got "
                    f"{None if codebooks is None else np.shape(codebooks)}"
                )
        self.nar_decoding = nar_decoding
        self.codebooks = None if codebooks is None else jnp.asarray(codebooks, jnp.float32)
        self.model = model
        self.cfg = model.cfg
        self.variant = model.cfg.variant
        self.output = "codes" if self.variant == "nar" and nar_decoding == "greedy" else "latent"
        self.bucket_frames = int(bucket_frames)
        self.prompt_frames = int(prompt_frames or self.cfg.max_len // 2)
        self.chunk_frames = int(chunk_frames or self.cfg.max_len - self.prompt_frames)
        if self.prompt_frames + self.chunk_frames > self.cfg.max_len:
            raise ValueError(
                f"prompt_frames {self.prompt_frames} + chunk_frames {self.chunk_frames} exceed "
                f"model.max_len={self.cfg.max_len}"
            )

    @classmethod
    def from_workdir(
        cls,
        config: ml_collections.ConfigDict,
        workdir: str,
        step: int | None = None,
        **kwargs,
    ) -> AcousticStage:
        """The model of `step` (default: latest) in <workdir>/checkpoints, params only."""
        from gpa_jax import sharding as sharding_lib
        from gpa_jax.models.config import mesh_config
        from gpa_jax.training import checkpoint as ckpt_lib

        # Inference on one device; the checkpoint restores onto any mesh.
        mesh = sharding_lib.make_mesh(mesh_config(shape=(1, 1, 1)), devices=jax.devices()[:1])
        directory = ckpt_lib.checkpoint_dir(workdir)
        if not paths.isdir(directory):
            raise FileNotFoundError(
                f"no acoustic checkpoints in {directory}: train with python -m launch.train "
                f"--config=<acoustic config> --workdir={workdir}"
            )
        return cls.from_model(ckpt_lib.restore_model(directory, config, mesh, step), config, **kwargs)

    @classmethod
    def from_model(
        cls, model: AcousticModel, config: ml_collections.ConfigDict, *, codec=None, **kwargs
    ) -> AcousticStage:
        """A trained model with the prompt / chunk lengths of its training `config`.

        NAR's default "expected" decoding reads the codebooks of `codec` (default: the codec
        that config.codec names, restored from its checkpoint)."""
        kwargs.setdefault("prompt_frames", int(config.data.prompt_max_frames))
        kwargs.setdefault("chunk_frames", int(config.data.target_max_frames))
        if model.cfg.variant == "nar":
            kwargs.setdefault("nar_decoding", DEFAULT_NAR_DECODING)
            if kwargs["nar_decoding"] == "expected" and kwargs.get("codebooks") is None:
                from gpa_jax.acoustic.kind import codec_codebooks, load_codec

                codec = load_codec(config)[0] if codec is None else codec
                kwargs["codebooks"] = codec_codebooks(codec)
        return cls(model, **kwargs)

    # --- inputs ---------------------------------------------------------------------------

    def _rows(self, rvq1: Sequence[np.ndarray], prompts: Sequence[np.ndarray]):
        cfg = self.cfg
        if len(rvq1) != len(prompts):
            raise ValueError(f"{len(rvq1)} rvq1 token arrays but {len(prompts)} prompts")
        items = []
        for i, (tokens, prompt) in enumerate(zip(rvq1, prompts, strict=True)):
            tokens, prompt = np.asarray(tokens), np.asarray(prompt)
            if tokens.ndim != 1 or tokens.size == 0:
                raise ValueError(f"item {i}: rvq1_tokens must be int [T>=1], got {tokens.shape}")
            if prompt.ndim != 2 or prompt.shape[0] != cfg.n_q or prompt.shape[1] == 0:
                raise ValueError(
                    f"item {i}: prompt_codes must be int [n_q={cfg.n_q}, P>=1], got {prompt.shape}"
                )
            for name, a in (("rvq1_tokens", tokens), ("prompt_codes", prompt)):
                if not np.issubdtype(a.dtype, np.integer):
                    raise ValueError(f"item {i}: {name} must be integers, got {a.dtype}")
                if a.min() < 0 or a.max() >= cfg.codebook_size:
                    raise ValueError(
                        f"item {i}: {name} span [{a.min()}, {a.max()}], outside "
                        f"[0, {cfg.codebook_size})"
                    )
            if prompt.shape[1] + tokens.size > cfg.max_len:
                raise ValueError(
                    f"item {i}: prompt {prompt.shape[1]} + target {tokens.size} frames exceed "
                    f"model.max_len={cfg.max_len}; shorten the prompt or split the target"
                )
            items.append((tokens, prompt))
        length = min(
            _bucket(max(t.size + p.shape[1] for t, p in items), self.bucket_frames), cfg.max_len
        )
        batch = 1 << max(0, (len(items) - 1).bit_length())  # next power of two
        codes = np.zeros((batch, length, cfg.n_q), np.int32)
        prompt_mask = np.zeros((batch, length), np.int32)
        segment_ids = np.zeros((batch, length), np.int32)
        spans = []
        for b, (tokens, prompt) in enumerate(items):
            p, t = prompt.shape[1], tokens.size
            codes[b, :p] = prompt.T
            codes[b, p : p + t, 0] = tokens
            prompt_mask[b, :p] = 1
            segment_ids[b, : p + t] = 1
            spans.append((p, p + t))
        return codes, prompt_mask, segment_ids, spans

    # --- the interface ----------------------------------------------------------------------

    def complete_batch(
        self, rvq1_tokens: Sequence[np.ndarray], prompt_codes: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Lists of items -> list of codes int32 [n_q, T_i] or latents [T_i, D] (`output`)."""
        if not len(rvq1_tokens):
            return []
        if len(rvq1_tokens) != len(prompt_codes):
            raise ValueError(f"{len(rvq1_tokens)} rvq1 token arrays but {len(prompt_codes)} prompts")
        # Long inputs: the trained prompt length, and the target in trained-length chunks.
        owner, pieces, prompts = [], [], []
        for i, (tokens, prompt) in enumerate(zip(rvq1_tokens, prompt_codes, strict=True)):
            tokens, prompt = np.asarray(tokens), np.asarray(prompt)
            if prompt.ndim == 2:
                prompt = prompt[:, : self.prompt_frames]
            starts = range(0, max(tokens.size, 1), self.chunk_frames) if tokens.ndim == 1 else [0]
            for start in starts:
                owner.append(i)
                pieces.append(tokens[start : start + self.chunk_frames] if tokens.ndim == 1 else tokens)
                prompts.append(prompt)
        outs = self._complete_rows(pieces, prompts)
        joined: list[list[np.ndarray]] = [[] for _ in rvq1_tokens]
        for i, out in zip(owner, outs, strict=True):
            joined[i].append(out)
        axis = 1 if self.output == "codes" else 0
        return [np.concatenate(parts, axis=axis) for parts in joined]

    def _complete_rows(self, rvq1_tokens, prompt_codes) -> list[np.ndarray]:
        """Items that fit model.max_len -> codes [n_q, T_i] or latents [T_i, D] (`output`)."""
        codes, prompt_mask, segment_ids, spans = self._rows(rvq1_tokens, prompt_codes)
        args = (jnp.asarray(codes), jnp.asarray(prompt_mask), jnp.asarray(segment_ids))
        if self.output == "codes":
            out = np.asarray(_fill_layers(self.model, *args))
            return [np.ascontiguousarray(out[b, s:e].T, np.int32) for b, (s, e) in enumerate(spans)]
        if self.variant == "nar":
            out = np.asarray(_expected_latent(self.model, *args, self.codebooks))
        else:
            out = np.asarray(_vocoder_latent(self.model, *args))
        return [np.ascontiguousarray(out[b, s:e], np.float32) for b, (s, e) in enumerate(spans)]

    def complete(self, rvq1_tokens, prompt_codes):
        """One item (arrays) -> codes [n_q, T] or latent [T, D] (`output`); lists -> lists."""
        if isinstance(rvq1_tokens, np.ndarray | jax.Array) and np.ndim(rvq1_tokens) == 1:
            return self.complete_batch([rvq1_tokens], [prompt_codes])[0]
        return self.complete_batch(list(rvq1_tokens), list(prompt_codes))


# --- codec side -------------------------------------------------------------------------------


@nnx.jit
def _decode_latent(codec, latent):
    return codec.decoder(latent)[..., 0]


def decode_latent(codec, latent: np.ndarray) -> np.ndarray:
    """Codec latent [T, D] (the vocoder's output) -> float32 waveform [T * hop]."""
    latent = np.asarray(latent, np.float32)
    if latent.ndim != 2 or latent.shape[1] != codec.dimension:
        raise ValueError(f"latent must be [T, D={codec.dimension}], got {latent.shape}")
    t = latent.shape[0]
    padded = np.zeros((1, _bucket(t, DEFAULT_BUCKET_FRAMES), latent.shape[1]), np.float32)
    padded[0, :t] = latent
    wav = np.asarray(_decode_latent(codec, jnp.asarray(padded)))
    return np.ascontiguousarray(wav[0, : t * codec.hop_length], np.float32)


@nnx.jit
def _quantize(codec, latent):
    return codec.quantizer.encode_codes(latent)


def latent_to_codes(codec, latent: np.ndarray) -> np.ndarray:
    """Vocoder latent [T, D] -> codes int32 [n_q, T] by the codec's RVQ (nearest codes)."""
    latent = np.asarray(latent, np.float32)
    return np.asarray(_quantize(codec, jnp.asarray(latent[None])))[0].astype(np.int32)


def synthesize(stage: AcousticStage, codec, rvq1_tokens, prompt_codes) -> list[np.ndarray]:
    """Waveforms for lists of items, through either variant and the frozen codec decoder."""
    from gpa_jax.codec import api as codec_api

    outs = stage.complete_batch(list(rvq1_tokens), list(prompt_codes))
    if stage.output == "codes":
        return codec_api.decode_batch(codec, outs)
    return [decode_latent(codec, latent) for latent in outs]
