"""Residual vector quantizer with EMA codebooks (SoundStream / EnCodec / SpeechTokenizer).

n_q codebooks of `codebook_size` vectors of dim D. Layer i quantizes the residual left by
layers < i; the quantized latent is the sum of the chosen vectors. Codebooks are not
learned by gradient: they are EMA cluster centres, so every codebook buffer is a
`CodebookState` variable (not `nnx.Param`) that the optimizer never sees.

Training-mode update of layer i, on the flattened residuals r [N, D] of the batch (the
reference is `EuclideanCodebook.forward` in SpeechTokenizer / EnCodec `core_vq.py`):
1. first batch only: k-means (k-means++ seeding + `kmeans_iters` Lloyd steps; the
   reference uses random seeding and 50 iterations) sets the codebook, cluster sizes to
   the cluster counts and the embedding sums to centroid * count;
2. codes = nearest codebook vector (Euclidean);
3. EMA with decay 0.99: cluster_size <- d * cluster_size + (1 - d) * counts,
   embed_sum <- d * embed_sum + (1 - d) * sum of the residuals assigned to each code;
   codebook = embed_sum / n_k, where n_k is the Laplace-smoothed cluster size
   (cluster_size + eps) / (sum + K * eps) * sum, eps = 1e-5;
4. dead codes (EMA cluster size < threshold 2) are replaced by random residuals of the
   current batch; their cluster size is reset to the threshold and their sum to
   vector * threshold, so the replacement survives the next EMA step.
Deviations from the reference, on purpose: (a) the reference expires codes *before* the
EMA step and then overwrites the whole codebook with embed_avg / cluster_size, which
discards the replacements (EnCodec issue #33 discusses the ordering); (b) its k-means init
sets embed_avg = centroid (not centroid * count), which shrinks every centroid by its count
at the first EMA step; (c) k-means++ seeding, so well-separated clusters are not merged
when two random seeds land in one cluster.

Gradients: the output is x + stop_gradient(sum_i q_i - x) (straight-through), so d out /
d x = I. Each layer's input residual is r_i = x - stop_gradient(sum_{j<i} q_j), so every
layer's commitment loss mean((r_i - sg(q_i))^2) pulls the encoder towards the quantized
sum so far. (The reference subtracts the straight-through q_i, which zeroes the encoder
gradient of every commitment term but the first.) The per-layer losses are *averaged*
over the active layers, as SpeechTokenizer's `ResidualVectorQuantizer` does
(`torch.mean(commit_loss)`); the trainer multiplies by its commitment weight.

Everything is jit-able: the k-means branch is a `lax.cond` on the per-layer `initialized`
flag, and quantizer dropout draws the number of active layers as a traced integer and
masks the inactive ones (their outputs, losses and codebook updates). Under data
parallelism the statistics are taken over the global batch, so replicas stay identical.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gpa_jax.codec.seanet import Dense, uniform_init

_HIGHEST = jax.lax.Precision.HIGHEST


class CodebookState(nnx.Variable):
    """Non-trainable codebook buffers (codebook, EMA sums and sizes, init flags)."""


def sq_distances(x: jax.Array, embed: jax.Array) -> jax.Array:
    """||x - e||^2 for x [N, D], embed [K, D] -> [N, K], in full f32 precision.

    HIGHEST precision keeps code choices stable on accelerators whose default f32 matmul
    rounds through bf16 (near-ties would otherwise flip between devices).
    """
    cross = jnp.einsum("nd,kd->nk", x, embed, precision=_HIGHEST)
    return (
        jnp.sum(jnp.square(x), -1, keepdims=True)
        - 2.0 * cross
        + jnp.sum(jnp.square(embed), -1)[None, :]
    )


def nearest_code(x: jax.Array, embed: jax.Array) -> jax.Array:
    """Index of the nearest codebook vector for each row of x [..., D] -> int32 [...]."""
    flat = x.reshape(-1, x.shape[-1])
    return jnp.argmin(sq_distances(flat, embed), axis=-1).astype(jnp.int32).reshape(x.shape[:-1])


def _counts_and_sums(x: jax.Array, codes: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    counts = jax.ops.segment_sum(jnp.ones_like(codes, x.dtype), codes, num_segments=k)
    sums = jax.ops.segment_sum(x, codes, num_segments=k)
    return counts, sums


def kmeans(
    samples: jax.Array, num_clusters: int, num_iters: int, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """k-means++ seeding then Lloyd iterations; deterministic given `key`.

    samples [N, D] -> (centroids [K, D], counts [K] of the final assignment). A centroid
    whose cluster empties keeps its previous position (as the reference). With N < K some
    seeds repeat (once every sample is a seed the D^2 weights are all zero and seeding falls
    back to uniform picks); their clusters stay empty and dead-code replacement reuses them.
    """
    uniforms = jax.random.uniform(key, (num_clusters,), jnp.float32)
    return kmeans_from_uniforms(samples, num_clusters, num_iters, uniforms)


def _pick(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Index drawn with probability proportional to `weights` (uniform if all zero) by u."""
    n = weights.shape[0]
    total = jnp.sum(weights)
    by_weight = jnp.searchsorted(jnp.cumsum(weights), u * total, side="right")
    idx = jnp.where(total > 0, by_weight, jnp.floor(u * n).astype(jnp.int32))
    return jnp.clip(idx, 0, n - 1)


def kmeans_from_uniforms(
    samples: jax.Array, num_clusters: int, num_iters: int, uniforms: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """`kmeans` driven by K given U[0, 1) draws (one per seed pick).

    Taking the randomness as plain numbers keeps the traced graph free of PRNG kernels,
    which are slow to compile on XLA-CPU; the caller draws all of a step's numbers at once.
    """
    samples = samples.astype(jnp.float32)
    n = samples.shape[0]
    first = samples[_pick(jnp.zeros((n,), jnp.float32), uniforms[0])]
    d2 = jnp.sum(jnp.square(samples - first), -1)
    means = jnp.zeros((num_clusters, samples.shape[1]), jnp.float32).at[0].set(first)

    def seed(i, carry):
        means, d2 = carry
        center = samples[_pick(d2, uniforms[i])]
        return means.at[i].set(center), jnp.minimum(d2, jnp.sum(jnp.square(samples - center), -1))

    means, _ = jax.lax.fori_loop(1, num_clusters, seed, (means, d2))

    def lloyd(_, means):
        assign = jnp.argmin(sq_distances(samples, means), -1)
        counts, sums = _counts_and_sums(samples, assign, num_clusters)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], means)

    means = jax.lax.fori_loop(0, num_iters, lloyd, means)
    counts, _ = _counts_and_sums(
        samples, jnp.argmin(sq_distances(samples, means), -1), num_clusters
    )
    return means, counts


def ema_update(
    cluster_size: jax.Array,
    embed_sum: jax.Array,
    x: jax.Array,
    codes: jax.Array,
    decay: float,
    epsilon: float,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One EMA step -> (cluster_size, embed_sum, codebook) with Laplace-smoothed sizes."""
    k = cluster_size.shape[0]
    counts, sums = _counts_and_sums(x, codes, k)
    cluster_size = decay * cluster_size + (1.0 - decay) * counts
    embed_sum = decay * embed_sum + (1.0 - decay) * sums
    total = jnp.sum(cluster_size)
    smoothed = (cluster_size + epsilon) / (total + k * epsilon) * total
    return cluster_size, embed_sum, embed_sum / smoothed[:, None]


def replace_dead_codes(
    embed: jax.Array,
    cluster_size: jax.Array,
    embed_sum: jax.Array,
    x: jax.Array,
    threshold: float,
    uniforms: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Codes with cluster_size < threshold take random rows of x [N, D] (with replacement).

    uniforms: K draws from U[0, 1), one per code, choosing its replacement row.
    """
    dead = cluster_size < threshold
    rows = jnp.clip(jnp.floor(uniforms * x.shape[0]).astype(jnp.int32), 0, x.shape[0] - 1)
    picks = x[rows]
    embed = jnp.where(dead[:, None], picks, embed)
    embed_sum = jnp.where(dead[:, None], picks * threshold, embed_sum)
    cluster_size = jnp.where(dead, jnp.asarray(threshold, cluster_size.dtype), cluster_size)
    return embed, cluster_size, embed_sum


class ResidualVectorQuantizer(nnx.Module):
    """n_q EMA codebooks applied to successive residuals (see module docstring)."""

    def __init__(
        self,
        *,
        dimension: int,
        n_q: int,
        codebook_size: int,
        decay: float = 0.99,
        epsilon: float = 1e-5,
        kmeans_init: bool = True,
        kmeans_iters: int = 50,
        dead_code_threshold: float = 2.0,
        quantizer_dropout: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.dimension, self.n_q, self.codebook_size = dimension, n_q, codebook_size
        self.decay, self.epsilon = decay, epsilon
        self.kmeans_iters = kmeans_iters
        self.dead_code_threshold = float(dead_code_threshold)
        self.quantizer_dropout = float(quantizer_dropout)
        # Random (kaiming-uniform) codebooks until k-means runs, so an untrained model still
        # spreads its codes; with kmeans_init the first training batch replaces them.
        bound = (6.0 / dimension) ** 0.5  # torch kaiming_uniform_ on a [K, D] tensor
        embed = uniform_init(rngs.params(), (n_q, codebook_size, dimension), bound)
        self.embed = CodebookState(embed)
        self.embed_sum = CodebookState(embed)
        self.cluster_size = CodebookState(jnp.asarray(np.ones((n_q, codebook_size), np.float32)))
        self.initialized = CodebookState(jnp.asarray(np.full((n_q,), not kmeans_init)))
        # Own stream for k-means seeds, dead-code picks and dropout; its counter is state,
        # so successive jitted steps draw fresh keys deterministically from the seed.
        self.rngs = nnx.Rngs(quantizer=rngs.params())

    def _train_layer(
        self, r: jax.Array, state: tuple[jax.Array, ...], active: jax.Array, u: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        """One layer's training update on residuals r [N, D] (pure: state in, state out).

        state = (codebook, cluster_size, embed_sum, initialized). Returns the codebook this
        step quantizes with (after k-means init, before the EMA step, as the reference) and
        the new state; an inactive layer (quantizer dropout) keeps its state. u: 2K
        uniforms (k-means seeding, dead-code picks).
        """
        embed0, size0, sum0, inited0 = state
        k = self.codebook_size

        def run_kmeans(_):
            means, counts = kmeans_from_uniforms(r, k, self.kmeans_iters, u[:k])
            return means, counts, means * counts[:, None]

        needs_init = jnp.logical_and(active, jnp.logical_not(inited0))
        embed, size, sums = jax.lax.cond(
            needs_init, run_kmeans, lambda _: (embed0, size0, sum0), None
        )
        codes = nearest_code(r, embed)
        new_size, new_sum, new_embed = ema_update(size, sums, r, codes, self.decay, self.epsilon)
        if self.dead_code_threshold > 0:
            new_embed, new_size, new_sum = replace_dead_codes(
                new_embed, new_size, new_sum, r, self.dead_code_threshold, u[k:]
            )
        new_state = (
            jnp.where(active, new_embed, embed0),
            jnp.where(active, new_size, size0),
            jnp.where(active, new_sum, sum0),
            jnp.logical_or(inited0, active),
        )
        return embed, new_state

    def quantize(
        self,
        x: jax.Array,
        n_q: int | None = None,
        train: bool = False,
        *,
        layer_outputs: bool = False,
        rng: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        """x [b, T, D] -> (quantized [b, T, D], codes int32 [b, n_q, T], aux).

        aux: 'commit_loss' (mean of the active layers' commitment losses), 'commit_per_layer'
        [n_q], 'perplexity' [n_q] (exp entropy of each layer's code histogram), 'n_active'
        (layers used: n_q unless quantizer dropout drew fewer), and with layer_outputs=True
        'layer_outputs' [n_q, b, T, D]: each layer's quantized vectors (straight-through in
        training; layer 0 is the RVQ-1 output that semantic distillation uses). With
        train=True the codebooks update (EMA, k-means init, dead codes) and quantizer
        dropout applies; `rng` overrides the module's own stream for that step.

        The layers run as one `lax.scan` (the residual is the carry), so compile time does
        not grow with n_q.
        """
        n = self.n_q if n_q is None else int(n_q)
        if not 1 <= n <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n}")
        x = x.astype(jnp.float32)
        b, t, d = x.shape
        n_active = jnp.asarray(n, jnp.int32)
        if train:
            # All of the step's randomness in one draw (see `kmeans_from_uniforms`): per layer
            # K seeding + K dead-code numbers, plus two for quantizer dropout.
            key = self.rngs.quantizer() if rng is None else rng
            k = self.codebook_size
            u = jax.random.uniform(key, (n, 2 * k + 2), jnp.float32)
            if self.quantizer_dropout > 0:
                drawn = 1 + jnp.minimum(jnp.floor(u[0, -1] * n).astype(jnp.int32), n - 1)
                n_active = jnp.where(u[0, -2] < self.quantizer_dropout, drawn, n_active)
            layer_u = u[:, : 2 * k]
        else:
            layer_u = jnp.zeros((n, 0), jnp.float32)  # unused placeholder
        state = (
            self.embed[:n],
            self.cluster_size[:n],
            self.embed_sum[:n],
            self.initialized[:n],
        )

        def layer(residual, inputs):
            i, u_i, layer_state = inputs
            active = i < n_active
            if train:
                r = jax.lax.stop_gradient(residual).reshape(-1, d)
                embed, layer_state = self._train_layer(r, layer_state, active, u_i)
            else:
                embed = layer_state[0]
            idx = nearest_code(residual, embed)
            q = jax.lax.stop_gradient(embed[idx])
            commit = jnp.mean(jnp.square(residual - q))
            hist = jnp.bincount(idx.reshape(-1), length=self.codebook_size) / (b * t)
            perplexity = jnp.exp(-jnp.sum(hist * jnp.log(hist + 1e-10)))
            mask = active.astype(x.dtype)
            layer_q = residual + jax.lax.stop_gradient(q - residual) if train else q
            outs = (idx, q * mask, layer_q * mask if layer_outputs else None, commit, perplexity)
            return residual - q, (outs, layer_state)

        _, (outs, new_state) = jax.lax.scan(layer, x, (jnp.arange(n), layer_u, state))
        codes, q_layers, layer_qs, commit, perplexity = outs
        if train:
            for var, value in zip(
                (self.embed, self.cluster_size, self.embed_sum, self.initialized),
                new_state,
                strict=True,
            ):
                var[...] = var[...].at[:n].set(value)

        active_mask = (jnp.arange(n) < n_active).astype(jnp.float32)
        aux: dict[str, Any] = {
            "commit_loss": jnp.sum(commit * active_mask) / n_active.astype(jnp.float32),
            "commit_per_layer": commit,
            "perplexity": perplexity,
            "n_active": n_active,
        }
        if layer_outputs:
            aux["layer_outputs"] = layer_qs
        q_sum = jnp.sum(q_layers, axis=0)
        quantized = x + jax.lax.stop_gradient(q_sum - x) if train else q_sum
        return quantized, jnp.moveaxis(codes, 0, 1), aux

    def encode_codes(self, x: jax.Array, n_q: int | None = None) -> jax.Array:
        """x [b, T, D] -> codes int32 [b, n_q, T] (inference; no codebook update)."""
        return self.quantize(x, n_q)[1]

    def decode_codes(
        self, codes: jax.Array, num_layers: jax.Array | int | None = None
    ) -> jax.Array:
        """codes [b, n, T] with n <= n_q (layers 0..n-1) -> summed vectors [b, T, D].

        Fewer layers than n_q give the coarser reconstruction (e.g. RVQ-1 only: n = 1).
        `num_layers` (may be traced) sums only the first num_layers of the n given, so one
        compiled decoder serves every depth when callers pad codes to n_q layers.
        """
        n = codes.shape[1]
        if n > self.n_q:
            raise ValueError(f"codes have {n} layers but the quantizer has {self.n_q}")
        limit = n if num_layers is None else num_layers
        out = jnp.zeros(codes.shape[:1] + codes.shape[2:] + (self.dimension,), jnp.float32)
        for i in range(n):
            keep = jnp.asarray(i < limit, jnp.float32)
            out = out + keep * self.embed[i][codes[:, i]]
        return out

    def codebooks(self) -> jax.Array:
        """[n_q, K, D]: the vector each code adds to the decoder's input, per layer."""
        return self.embed[...]


class _LayerOneThenRVQ(nnx.Module):
    """Quantizers whose layer 1 is not a plain RVQ layer: `_layer_one` gives its vector and
    code, then `self.acoustic` (a plain RVQ of n_q - 1 layers) quantizes
    `_acoustic_input(x, vector)`; the output is their sum. Codes keep the layout
    [b, n_q, T] and every layer adds one vector of `codebooks()` to the decoder's input.
    Subclasses set `self.acoustic` and define the `_layer_one*` / `_acoustic_input` hooks.
    """

    acoustic: ResidualVectorQuantizer
    # Whether layer 1 has a commitment loss of its own (averaged with the acoustic ones).
    _layer_one_commits = True

    def _layer_one(self, x, train, rng, **given):  # -> vector, codes [b,1,T], commit, ppl, aux
        raise NotImplementedError

    def _layer_one_vectors(self, codes: jax.Array) -> jax.Array:  # codes [b, T] -> [b, T, D]
        raise NotImplementedError

    def _layer_one_book(self) -> jax.Array:  # [K, D] as the decoder sees it
        raise NotImplementedError

    def _acoustic_input(self, x: jax.Array, first: jax.Array) -> jax.Array:
        raise NotImplementedError

    def quantize(
        self,
        x: jax.Array,
        n_q: int | None = None,
        train: bool = False,
        *,
        layer_outputs: bool = False,
        rng: jax.Array | None = None,
        **given: jax.Array,
    ) -> tuple[jax.Array, jax.Array, dict[str, Any]]:
        """As `ResidualVectorQuantizer.quantize`; `given`: a subclass's extra inputs."""
        n = self.n_q if n_q is None else int(n_q)
        if not 1 <= n <= self.n_q:
            raise ValueError(f"n_q must be in [1, {self.n_q}], got {n}")
        x = x.astype(jnp.float32)
        rng_1 = rng_a = None
        if rng is not None:
            rng_1, rng_a = jax.random.split(rng)
        first, codes, commit, perplexity, aux = self._layer_one(x, train, rng_1, **given)
        quantized = first
        outputs = [first[None]]
        if n > 1:
            q_a, codes_a, aux_a = self.acoustic.quantize(
                self._acoustic_input(x, first), n - 1, train,
                layer_outputs=layer_outputs, rng=rng_a,
            )  # fmt: skip
            quantized = quantized + q_a
            codes = jnp.concatenate([codes, codes_a], axis=1)
            commit = jnp.concatenate([commit, aux_a["commit_per_layer"]])
            perplexity = jnp.concatenate([perplexity, aux_a["perplexity"]])
            if layer_outputs:
                outputs.append(aux_a["layer_outputs"])
        counted = n if self._layer_one_commits else max(n - 1, 1)
        aux.update(
            commit_loss=jnp.sum(commit) / counted,
            commit_per_layer=commit,
            perplexity=perplexity,
            n_active=jnp.asarray(n, jnp.int32),
        )
        if layer_outputs:
            aux["layer_outputs"] = jnp.concatenate(outputs, axis=0)
        return quantized, codes, aux

    def encode_codes(self, x: jax.Array, n_q: int | None = None, **given: jax.Array) -> jax.Array:
        """x [b, T, D] -> codes int32 [b, n_q, T] (inference; no codebook update)."""
        return self.quantize(x, n_q, **given)[1]

    def decode_codes(
        self, codes: jax.Array, num_layers: jax.Array | int | None = None
    ) -> jax.Array:
        """As `ResidualVectorQuantizer.decode_codes` (layer 1 is always decoded)."""
        n = codes.shape[1]
        if n > self.n_q:
            raise ValueError(f"codes have {n} layers but the quantizer has {self.n_q}")
        out = self._layer_one_vectors(codes[:, 0])
        if n > 1:
            rest = None if num_layers is None else num_layers - 1
            out = out + self.acoustic.decode_codes(codes[:, 1:], rest)
        return out

    def codebooks(self) -> jax.Array:
        """[n_q, K, D]: layer 1 as the decoder sees it, then the acoustic books."""
        return jnp.concatenate([self._layer_one_book()[None], self.acoustic.embed[...]], axis=0)


class SplitQuantizer(_LayerOneThenRVQ):
    """Mimi-style split quantizer: a semantic VQ on its own projection, then acoustic RVQ.

    Why: in the plain RVQ, layer 1 picks the nearest centroid of the whole latent, whose
    variance is mostly loudness, pitch and timbre, so distilling content into it moves
    the encoder but not the code choice (the CTC probe read CER 0.31 on RVQ-1 of
    codec_tiny against the teacher's 0.09). Here layer 1 quantizes `project_in(latent)`
    [.., semantic_dim], a subspace the distillation loss shapes alone, so its codes are
    content clusters (Mimi, Défossez et al. 2024, splits semantic and acoustic codebooks
    for the same reason). Its decoder-side vector is `project_out(code vector)`; layers
    2..n_q are a plain RVQ of what that leaves, latent - project_out(q). aux also has
    'semantic' [b, T, semantic_dim] (the semantic VQ's output, straight-through in
    training: what distillation reads). Quantizer dropout is not supported.
    """

    def __init__(
        self,
        *,
        dimension: int,
        semantic_dim: int,
        n_q: int,
        codebook_size: int,
        rngs: nnx.Rngs,
        **codebook_kwargs: Any,
    ):
        if n_q < 2:
            raise ValueError(
                f"the split quantizer needs n_q >= 2 (1 semantic + acoustic), got {n_q}"
            )
        if codebook_kwargs.get("quantizer_dropout", 0.0):
            raise ValueError("codec.quantizer='split' does not support quantizer_dropout > 0")
        self.dimension, self.n_q, self.codebook_size = dimension, n_q, codebook_size
        self.semantic_dim = semantic_dim
        self.project_in = Dense(dimension, semantic_dim, rngs=rngs)
        self.project_out = Dense(semantic_dim, dimension, rngs=rngs)
        common = dict(codebook_size=codebook_size, rngs=rngs, **codebook_kwargs)
        self.semantic = ResidualVectorQuantizer(dimension=semantic_dim, n_q=1, **common)
        self.acoustic = ResidualVectorQuantizer(dimension=dimension, n_q=n_q - 1, **common)

    def _layer_one(self, x, train, rng):
        q_s, codes, aux = self.semantic.quantize(self.project_in(x), 1, train, rng=rng)
        first = self.project_out(q_s)
        return first, codes, aux["commit_per_layer"], aux["perplexity"], {"semantic": q_s}

    def _layer_one_vectors(self, codes: jax.Array) -> jax.Array:
        return self.project_out(self.semantic.embed[0][codes])

    def _layer_one_book(self) -> jax.Array:
        return self.project_out(self.semantic.embed[0])

    def _acoustic_input(self, x: jax.Array, first: jax.Array) -> jax.Array:
        # No gradient through the subtraction, as between RVQ layers.
        return x - jax.lax.stop_gradient(first)


class TeacherCodeQuantizer(_LayerOneThenRVQ):
    """RVQ-1 is given, not learned: the frozen content teacher's VQ codes; RVQ 2..n_q code the rest.

    Why: distilling content into a VQ of the codec's latent did not make RVQ-1 a content
    code on the CPU budget (CTC probe CER 0.39-0.43 on RVQ-1, plain or split, against
    0.12 on the codes of a CTC recogniser with a VQ bottleneck, `teacher.ctc_vq_codes`).
    So layer 1's code at each frame is the teacher's code (`first_codes` [b, >= T],
    computed by the codec from the same waveform), and its decoder-side vector is a
    learned table `first_embed` [K, D] (trained by the reconstruction loss, like any
    decoder weight). The acoustic RVQ quantizes the encoder latent itself (no
    subtraction: the latent learns to carry what the content code leaves out); layer 1
    has no commitment loss. Quantizer dropout is not supported.
    """

    _layer_one_commits = False

    def __init__(
        self,
        *,
        dimension: int,
        n_q: int,
        codebook_size: int,
        rngs: nnx.Rngs,
        **codebook_kwargs: Any,
    ):
        if n_q < 2:
            raise ValueError(
                f"codec.quantizer='teacher' needs n_q >= 2 (1 given + acoustic), got {n_q}"
            )
        if codebook_kwargs.get("quantizer_dropout", 0.0):
            raise ValueError("codec.quantizer='teacher' does not support quantizer_dropout > 0")
        self.dimension, self.n_q, self.codebook_size = dimension, n_q, codebook_size
        bound = (6.0 / dimension) ** 0.5
        self.first_embed = nnx.Param(uniform_init(rngs.params(), (codebook_size, dimension), bound))
        self.acoustic = ResidualVectorQuantizer(
            dimension=dimension, n_q=n_q - 1, codebook_size=codebook_size, rngs=rngs,
            **codebook_kwargs,
        )  # fmt: skip

    def _layer_one(self, x, train, rng, first_codes: jax.Array | None = None):
        del train, rng  # nothing of layer 1 is learned from the latent
        b, t, _ = x.shape
        if first_codes is None:
            raise ValueError(
                "codec.quantizer='teacher' takes RVQ-1 from the content teacher: pass "
                "first_codes (the codec's encode/__call__ compute them from the waveform)"
            )
        if first_codes.shape[-1] < t:
            raise ValueError(f"first_codes cover {first_codes.shape[-1]} frames, the latent {t}")
        codes = first_codes[:, :t].astype(jnp.int32)
        hist = jnp.bincount(codes.reshape(-1), length=self.codebook_size) / (b * t)
        perplexity = jnp.exp(-jnp.sum(hist * jnp.log(hist + 1e-10)))[None]
        commit = jnp.zeros((1,), jnp.float32)
        return self._layer_one_vectors(codes), codes[:, None], commit, perplexity, {}

    def _layer_one_vectors(self, codes: jax.Array) -> jax.Array:
        return self.first_embed[...][codes]

    def _layer_one_book(self) -> jax.Array:
        return self.first_embed[...]

    def _acoustic_input(self, x: jax.Array, first: jax.Array) -> jax.Array:
        return x
