"""The SpeechTokenizer codec: SEANet encoder -> RVQ -> SEANet decoder, plus the semantic head.

The semantic head is SpeechTokenizer's `transform`: a linear map from the RVQ-1 quantized
output (dimension D; with the split quantizer, its semantic VQ's output) to the teacher's feature size, trained with the D-axis distillation
loss (`losses.d_axis_distill_loss`) so that RVQ-1 carries content; when D equals the
teacher size the reference uses the identity, and so do we. With no teacher
(`teacher.kind == 'none'`) there is no head and no distillation.

With `codec.quantizer='teacher'` the codec owns the frozen CTC content teacher
(`self.teacher`, saved in the codec's checkpoints, never updated: `TRAINABLE` leaves it
out of the gradient and the optimizer) and RVQ-1 is that teacher's VQ codes
(`rvq.TeacherCodeQuantizer`); there is no semantic head and no distillation then.

Parameters carry no logical axis names on purpose: the codec (~100 M params at paper
size) is replicated and trained data-parallel, which is what `gpa_jax.sharding` does
with unnamed variables.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from gpa_jax.codec.rvq import ResidualVectorQuantizer, SplitQuantizer, TeacherCodeQuantizer
from gpa_jax.codec.seanet import Dense, SEANetDecoder, SEANetEncoder
from gpa_jax.codec.spectral import MelEncoder, VocosDecoder

# What the codec's optimizer trains: every parameter but the frozen content teacher's.
TRAINABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("teacher")))


class Codec(nnx.Module):
    """Waveform codec with RVQ tokens at sample_rate / prod(strides) frames per second."""

    def __init__(
        self,
        cfg: ml_collections.ConfigDict,
        teacher_dim: int,
        *,
        rngs: nnx.Rngs,
        teacher: nnx.Module | None = None,
    ):
        """cfg: a config's `codec` section; teacher_dim: `teacher.dim` (0 = no distillation);
        teacher: the content teacher whose VQ codes are RVQ-1 (codec.quantizer='teacher')."""
        self.sample_rate = int(cfg.sample_rate)
        self.strides = tuple(int(s) for s in cfg.strides)
        self.hop_length = math.prod(self.strides)
        self.dimension = int(cfg.dimension)
        self.n_q = int(cfg.n_q)
        self.codebook_size = int(cfg.codebook_size)
        common = dict(
            n_filters=cfg.n_filters,
            strides=self.strides,
            dimension=self.dimension,
            n_residual_layers=cfg.n_residual_layers,
            residual_kernel_size=cfg.residual_kernel_size,
            dilation_base=cfg.dilation_base,
            kernel_size=cfg.kernel_size,
            last_kernel_size=cfg.last_kernel_size,
            compress=cfg.compress,
            true_skip=cfg.true_skip,
            lstm_layers=cfg.lstm_layers,
            pad_mode=cfg.pad_mode,
            init_gain=float(cfg.conv_init_gain),
            rngs=rngs,
        )
        spectral = dict(
            hop_length=self.hop_length,
            dimension=self.dimension,
            width=int(cfg.spectral_width),
            mlp_ratio=int(cfg.convnext_mlp_ratio),
            rngs=rngs,
        )
        if cfg.encoder == "seanet":
            self.encoder = SEANetEncoder(bidirectional=cfg.encoder_bidirectional, **common)
        elif cfg.encoder == "mel":
            self.encoder = MelEncoder(
                sample_rate=self.sample_rate,
                layers=int(cfg.encoder_layers),
                n_mels=int(cfg.spectral_n_mels),
                **spectral,
            )
        else:
            raise ValueError(f"codec.encoder {cfg.encoder!r}: expected seanet|mel")
        codebook = dict(
            n_q=self.n_q,
            codebook_size=self.codebook_size,
            decay=cfg.ema_decay,
            epsilon=cfg.ema_epsilon,
            kmeans_init=cfg.kmeans_init,
            kmeans_iters=cfg.kmeans_iters,
            dead_code_threshold=cfg.dead_code_threshold,
            quantizer_dropout=cfg.quantizer_dropout,
            rngs=rngs,
        )
        if cfg.quantizer == "rvq":
            self.quantizer = ResidualVectorQuantizer(dimension=self.dimension, **codebook)
            semantic_dim = self.dimension
        elif cfg.quantizer == "split":
            semantic_dim = int(cfg.semantic_dim) or self.dimension
            self.quantizer = SplitQuantizer(
                dimension=self.dimension, semantic_dim=semantic_dim, **codebook
            )
        elif cfg.quantizer == "teacher":
            if teacher is None or getattr(teacher, "vq", None) is None:
                raise ValueError(
                    "codec.quantizer='teacher' needs the CTC content teacher with a VQ "
                    "bottleneck (teacher.kind='ctc', teacher.ctc_vq_codes > 0)"
                )
            if teacher.vq.codebook_size != self.codebook_size:
                raise ValueError(
                    f"codec.quantizer='teacher': teacher.ctc_vq_codes "
                    f"({teacher.vq.codebook_size}) must equal codec.codebook_size "
                    f"({self.codebook_size}), since RVQ-1 codes are the teacher's"
                )
            self.quantizer = TeacherCodeQuantizer(dimension=self.dimension, **codebook)
            semantic_dim, teacher_dim = self.dimension, 0
        else:
            raise ValueError(f"codec.quantizer {cfg.quantizer!r}: expected rvq|split|teacher")
        self.teacher = teacher if cfg.quantizer == "teacher" else None
        if cfg.decoder == "seanet":
            self.decoder = SEANetDecoder(**common)
        elif cfg.decoder == "vocos":
            self.decoder = VocosDecoder(layers=int(cfg.decoder_layers), **spectral)
        else:
            raise ValueError(f"codec.decoder {cfg.decoder!r}: expected seanet|vocos")
        self.teacher_dim = int(teacher_dim)
        self.semantic_proj = (
            Dense(semantic_dim, self.teacher_dim, rngs=rngs)
            if self.teacher_dim and self.teacher_dim != semantic_dim
            else None
        )

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, rngs: nnx.Rngs | None = None) -> Codec:
        """Builds the codec of a `kind='codec'` config (seeded by `config.seed` by default)."""
        teacher_dim = 0 if config.teacher.kind == "none" else int(config.teacher.dim)
        rngs = rngs or nnx.Rngs(config.seed)
        teacher = None
        if config.codec.quantizer == "teacher":
            if config.teacher.kind != "ctc":
                raise ValueError(
                    f"codec.quantizer='teacher' needs teacher.kind='ctc', got "
                    f"{config.teacher.kind!r}"
                )
            from gpa_jax.codec.teacher import ContentTeacher

            # Weights come from the trained teacher (training) or the codec checkpoint.
            teacher = ContentTeacher(config, rngs=nnx.Rngs(0))
        return cls(config.codec, teacher_dim, rngs=rngs, teacher=teacher)

    def num_frames(self, num_samples: int) -> int:
        """Frames the encoder yields for a clip: ceil(samples / hop)."""
        return -(-int(num_samples) // self.hop_length)

    def frame_lengths(self, lengths: jax.Array | None) -> jax.Array | None:
        """Valid frames per item for valid sample counts [b] (None stays None)."""
        if lengths is None:
            return None
        return (jnp.asarray(lengths, jnp.int32) + self.hop_length - 1) // self.hop_length

    def encode_latent(self, wav: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
        """wav [b, samples] -> continuous latent [b, ceil(samples / hop), D].

        `lengths` (valid samples per item, for zero-padded batches) keeps the padding out of
        the encoder BiLSTM's backward pass.
        """
        return self.encoder(wav[..., None].astype(jnp.float32), self.frame_lengths(lengths))

    def _given_codes(self, wav: jax.Array, lengths: jax.Array | None) -> dict[str, jax.Array]:
        """The quantizer's extra input: the teacher's codes of `wav` when RVQ-1 is given."""
        if self.teacher is None:
            return {}
        return {"first_codes": jax.lax.stop_gradient(self.teacher.codes(wav, lengths))}

    def encode(
        self, wav: jax.Array, n_q: int | None = None, lengths: jax.Array | None = None
    ) -> jax.Array:
        """wav [b, samples] -> codes int32 [b, n_q, ceil(samples / hop)]."""
        latent = self.encode_latent(wav, lengths)
        return self.quantizer.encode_codes(latent, n_q, **self._given_codes(wav, lengths))

    def decode(self, codes: jax.Array, num_layers: jax.Array | int | None = None) -> jax.Array:
        """codes [b, n, frames] (n <= n_q: the first n layers) -> waveform [b, frames * hop].

        num_layers: use only the first num_layers of the n layers (see `decode_codes`).
        """
        return self.decoder(self.quantizer.decode_codes(codes, num_layers))[..., 0]

    def __call__(
        self,
        wav: jax.Array,
        train: bool = False,
        *,
        n_q: int | None = None,
        lengths: jax.Array | None = None,
        rng: jax.Array | None = None,
    ) -> dict[str, Any]:
        """wav [b, samples] -> dict of the forward pass (train=True updates the codebooks).

        Keys: 'recon' [b, samples] (decoder output cut to the input length), 'codes' int32
        [b, n_q, T], 'commit_loss' (scalar, mean over active RVQ layers), 'latent' (encoder
        output [b, T, D]), 'quantized' [b, T, D], 'rvq1' (RVQ-1 quantized [b, T, D]),
        'semantic_pred' ([b, T, teacher_dim], or None without a teacher), 'perplexity'
        [n_q], 'n_active' (RVQ layers used this step), 'commit_per_layer' [n_q].
        """
        num_samples = wav.shape[-1]
        latent = self.encode_latent(wav, lengths)
        quantized, codes, aux = self.quantizer.quantize(
            latent, n_q, train, layer_outputs=True, rng=rng, **self._given_codes(wav, lengths)
        )
        # What distillation reads: the split quantizer's semantic VQ output, else RVQ-1's.
        rvq1 = aux["semantic"] if "semantic" in aux else aux["layer_outputs"][0]
        if self.teacher_dim == 0:
            semantic = None
        elif self.semantic_proj is None:
            semantic = rvq1
        else:
            semantic = self.semantic_proj(rvq1)
        recon = self.decoder(quantized)[..., 0][:, :num_samples]
        return {
            "recon": recon,
            "codes": codes,
            "commit_loss": aux["commit_loss"],
            "commit_per_layer": aux["commit_per_layer"],
            "perplexity": aux["perplexity"],
            "n_active": aux["n_active"],
            "latent": latent,
            "quantized": quantized,
            "rvq1": rvq1,
            "semantic_pred": semantic,
        }
