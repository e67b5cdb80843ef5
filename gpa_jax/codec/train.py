"""Codec training: generator (codec) and MS-STFT discriminator steps, checkpoints, summaries.

    python -m launch.train_codec --config=configs/codec_tiny.py --workdir=runs/codec

One step: the codec runs in training mode on a batch of crops (its RVQ codebooks update
by EMA inside the step, so the step is an `nnx.jit` over the module and the optimizer
sees only `nnx.Param`s), the weighted generator objective (`losses.generator_loss`) is
minimised with Adam(W); then, when `config.loss.adversarial`, the discriminator takes one
hinge-loss step on the same batch and its detached reconstruction.

Work directory layout (under `--workdir`):
    codec/checkpoints/<step>/   Orbax: model (params + codebook buffers + RNG state),
                                optimizer, discriminator, its optimizer, data iterator
    codec/tensorboard/          scalars: loss terms, perplexity / active codes per RVQ layer
    codec/audio/                WAVs of the fixed validation clip: original, full-RVQ and
                                RVQ-1-only reconstructions (also sent to the writer)

A non-finite loss stops the run with `FloatingPointError` naming the step; a rerun with
the same workdir resumes from the newest checkpoint that restores (broken newer ones are
moved aside with a warning, `gpa_jax.recovery`), data iterator included. A finite loss
spike (train.divergence_factor) marks the checkpoints saved around it as diverged and the
newest good one is always kept. SIGTERM / SIGINT (`gpa_jax.preemption`) finish the step
in flight, save a checkpoint there and stop with status 143 / 130, in the CTC teacher's
training too. A full disk during a save (the teacher's too) is one `DiskFullError` naming
the checkpoint directory and the intact step; the half-written step is removed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx

from gpa_jax import paths, preemption, recovery
from gpa_jax.codec import api
from gpa_jax.codec import data as codec_data
from gpa_jax.codec.discriminator import MultiScaleSTFTDiscriminator
from gpa_jax.codec.losses import discriminator_loss, generator_loss, teacher_features
from gpa_jax.codec.model import TRAINABLE, Codec
from gpa_jax.training import checkpoint as ckpt_lib


def codec_dir(workdir: str) -> str:
    return os.path.join(workdir, "codec")


def checkpoint_dir(workdir: str) -> str:
    """Where the codec's Orbax checkpoints live (the tokenization job reads them)."""
    return os.path.join(codec_dir(workdir), "checkpoints")


def total_steps(config: ml_collections.ConfigDict) -> int:
    """Steps this run trains to: train.num_steps, else the whole schedule."""
    return int(config.train.num_steps or config.optimizer.num_train_steps)


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Adam(W) with optional warm-up, cosine/constant schedule and global-norm clipping."""
    o = config.optimizer
    warmup = int(o.warmup_steps)
    decay_steps = max(1, int(o.num_train_steps) - warmup)
    if o.schedule == "cosine":
        body = optax.cosine_decay_schedule(o.learning_rate, decay_steps)
    elif o.schedule == "constant":
        body = optax.constant_schedule(o.learning_rate)
    else:
        raise ValueError(f"optimizer.schedule {o.schedule!r}: expected cosine|constant")
    schedule = (
        optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), body], [warmup])
        if warmup > 0
        else body
    )
    tx = optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
    if o.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
    return tx


_TX_CACHE: dict[str, optax.GradientTransformation] = {}


def _shared_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """One transformation object per optimizer config: it is static in the optimizer's
    graph, so a fresh one per run would make every run recompile the jitted steps."""
    key = config.optimizer.to_json()
    if key not in _TX_CACHE:
        _TX_CACHE[key] = make_optimizer(config)
    return _TX_CACHE[key]


@dataclasses.dataclass
class CodecState:
    """Everything a codec run updates: the modules and their optimizers."""

    model: Codec
    optimizer: nnx.Optimizer
    disc: MultiScaleSTFTDiscriminator | None = None
    disc_optimizer: nnx.Optimizer | None = None

    @classmethod
    def create(cls, config: ml_collections.ConfigDict) -> CodecState:
        """Built eagerly (not under jit): the RVQ keeps its own nnx.Rngs stream."""
        check_trainable(config)
        model = Codec.from_config(config)
        tx = _shared_optimizer(config)
        state = cls(model, nnx.Optimizer(model, tx, wrt=TRAINABLE))
        if config.loss.adversarial:
            disc = MultiScaleSTFTDiscriminator.from_config(config)
            state.disc = disc
            state.disc_optimizer = nnx.Optimizer(disc, tx, wrt=nnx.Param)
        return state

    def items(self) -> dict[str, nnx.Module | nnx.Optimizer]:
        out: dict[str, Any] = {"model": self.model, "optimizer": self.optimizer}
        if self.disc is not None:
            out["disc"] = self.disc
            out["disc_optimizer"] = self.disc_optimizer
        return out


def check_trainable(config: ml_collections.ConfigDict) -> None:
    """Rejects configs this trainer cannot feed, with what to change."""
    kind = config.teacher.kind
    if kind not in ("none", "hubert_features", "ctc", "log_mel"):
        raise ValueError(f"teacher.kind {kind!r}: expected none|hubert_features|ctc|log_mel")
    if kind == "hubert_features" and not config.teacher.path:
        raise ValueError(
            "teacher.kind='hubert_features' needs teacher.path: a feature store made by "
            "`python -m launch.precompute_hubert --model_dir=<local HF model> ...`; on CPU "
            "use --config.teacher.kind=ctc (trained here) instead"
        )


# --- jitted steps ------------------------------------------------------------------------

_STEP_CACHE: dict[str, tuple[Callable, Callable]] = {}


def _active_codes(codes: jax.Array, codebook_size: int) -> jax.Array:
    """Distinct codes used per RVQ layer in a batch: codes [b, n_q, T] -> [n_q]."""
    per_layer = jnp.moveaxis(codes, 1, 0).reshape(codes.shape[1], -1)
    return jax.vmap(lambda c: jnp.sum(jnp.bincount(c, length=codebook_size) > 0))(per_layer)


def make_steps(config: ml_collections.ConfigDict) -> tuple[Callable, Callable]:
    """(generator_step, discriminator_step), jitted once per config in this process."""
    # Keyed on the sections the steps read, so runs differing only in data / cadence share.
    key = "|".join(
        config[name].to_json()
        for name in ("codec", "teacher", "loss", "discriminator", "optimizer")
    )
    if key in _STEP_CACHE:
        return _STEP_CACHE[key]
    codebook_size = int(config.codec.codebook_size)

    def gen_loss(model: Codec, disc, teacher_model, wav, mask, lengths, precomputed):
        out = dict(model(wav, train=True, lengths=lengths))
        # Padding (zeros in `wav`) is kept out of the reconstruction terms.
        out["recon"] = out["recon"] * mask
        teacher = None  # no semantic head (no teacher, or RVQ-1 given by its codes)
        if model.teacher_dim:
            teacher = teacher_features(
                wav, config, teacher_model=teacher_model, lengths=lengths, precomputed=precomputed
            )
        total, metrics = generator_loss(out, wav, config, teacher=teacher, discriminator=disc)
        return total, (metrics, out)

    @nnx.jit
    def generator_step(model, optimizer, disc, teacher_model, batch):
        wav, mask, lengths = batch["audio"], batch["mask"], batch["lengths"]
        grad_fn = nnx.value_and_grad(gen_loss, argnums=nnx.DiffState(0, TRAINABLE), has_aux=True)
        (_, (metrics, out)), grads = grad_fn(
            model, disc, teacher_model, wav, mask, lengths, batch.get("teacher")
        )
        optimizer.update(model, grads)
        metrics = dict(metrics)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["perplexity"] = out["perplexity"]
        metrics["active_codes"] = _active_codes(out["codes"], codebook_size)
        return metrics, jax.lax.stop_gradient(out["recon"])

    @nnx.jit
    def discriminator_step(disc, optimizer, wav, recon):
        loss, grads = nnx.value_and_grad(discriminator_loss)(disc, wav, recon)
        optimizer.update(disc, grads)
        return loss

    _STEP_CACHE[key] = (generator_step, discriminator_step)
    return generator_step, discriminator_step


# --- checkpoints -------------------------------------------------------------------------


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _saveable(obj: nnx.Module | nnx.Optimizer) -> dict:
    """Pure-dict state with typed PRNG keys as raw key data (Orbax stores plain arrays)."""
    pure = nnx.to_pure_dict(nnx.state(obj))
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, pure)


def _load_saved(obj: nnx.Module | nnx.Optimizer, restored: dict) -> None:
    """Writes a restored pure dict back into `obj`, re-wrapping the PRNG keys."""
    state = nnx.state(obj)
    template = nnx.to_pure_dict(state)
    values = jax.tree.map(
        lambda t, r: (
            jax.random.wrap_key_data(r, impl=jax.random.key_impl(t))
            if _is_key(t)
            else jnp.asarray(r, t.dtype)
        ),
        template,
        restored,
    )
    nnx.replace_by_pure_dict(state, values)
    nnx.update(obj, state)


def _abstract(tree: dict) -> dict:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def checkpoint_manager(directory: str, keep: int | None = None) -> ocp.CheckpointManager:
    """Keeps the newest `keep` steps (None/0: all) and the newest undiverged one."""
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [ocp.checkpoint_managers.LatestN(n=keep or None), recovery.LastGood()]
    )
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    return ocp.CheckpointManager(paths.absolute(directory), options=options)


def save_checkpoint(
    manager: ocp.CheckpointManager,
    step: int,
    state: CodecState,
    data_state: dict,
    metrics: dict[str, float] | None = None,
) -> None:
    """Saves `state` and the data position at `step`, waiting until written; a full disk is
    one `DiskFullError` naming the intact checkpoint (`gpa_jax.training.checkpoint`)."""
    args = {name: ocp.args.StandardSave(_saveable(obj)) for name, obj in state.items().items()}
    args["data"] = ocp.args.JsonSave(data_state)
    ckpt_lib.save_step(manager, step, ocp.args.Composite(**args), metrics=metrics, wait=True)


def restore_checkpoint(
    manager: ocp.CheckpointManager, step: int, state: CodecState
) -> dict[str, Any]:
    """Restores every item of `state` in place; returns the data-iterator state."""
    objs = state.items()
    args = {name: ocp.args.StandardRestore(_abstract(_saveable(o))) for name, o in objs.items()}
    args["data"] = ocp.args.JsonRestore()
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    for name, obj in objs.items():
        _load_saved(obj, restored[name])
    return restored["data"]


def restore_codec(
    config: ml_collections.ConfigDict, directory: str, step: int | None = None
) -> tuple[Codec, int]:
    """The trained codec (params + codebook buffers) from a codec checkpoint directory."""
    if not paths.isdir(directory):
        raise FileNotFoundError(f"no codec checkpoint directory {directory!r}; train one first")
    manager = checkpoint_manager(directory)
    model = Codec.from_config(config)
    args = ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(_saveable(model))))
    try:
        if step is None:  # the newest that restores (broken newer ones moved aside)
            found = recovery.restore_newest(
                manager, lambda s: manager.restore(s, args=args), what="codec"
            )
            if found is None:
                raise FileNotFoundError(f"no codec checkpoint in {directory!r}; train one first")
            step, restored = found
        else:
            restored = manager.restore(step, args=args)
    finally:
        manager.close()
    _load_saved(model, restored["model"])
    return model, int(step)


# --- the content teacher ---------------------------------------------------------------


def ensure_teacher(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_dir: str | None = None,
    train_set: tuple[list[np.ndarray], list[str]] | None = None,
    progress: bool = True,
):
    """The CTC content teacher of teacher.path (default <workdir>/codec/teacher), trained
    first (on config.data.corpus, or `train_set`) when that directory has none."""
    from gpa_jax.codec import teacher as teacher_lib

    directory = teacher_lib.teacher_dir(config, workdir)
    if not paths.isfile(os.path.join(directory, "meta.json")):
        if train_set is None and data_dir is None:
            raise FileNotFoundError(
                f"no CTC teacher in {directory!r} and no corpus to train one (data_dir)"
            )
        meta = teacher_lib.train_teacher(
            config, directory, data_dir=data_dir, train_set=train_set, progress=progress
        )
        logging.info("codec: trained the CTC teacher: %s", meta)
    return teacher_lib.load_teacher(config, directory)


# --- summaries ---------------------------------------------------------------------------


def _create_writer(logdir: str):
    from gpa_jax.training.metrics import create_default_writer

    return create_default_writer(logdir)


def _scalars(metrics: Sequence[dict[str, np.ndarray]]) -> dict[str, float]:
    """Means over the logged steps; per-layer arrays become rvq1 / mean entries."""
    out: dict[str, float] = {}
    for name in metrics[0]:
        values = np.stack([np.asarray(m[name], np.float64) for m in metrics])
        if values.ndim == 1:
            out[f"loss/{name}" if name not in ("grad_norm", "d_loss") else name] = values.mean()
        else:
            out[f"{name}/rvq1"] = values[:, 0].mean()
            out[f"{name}/mean"] = values.mean()
    return {k: float(v) for k, v in out.items()}


def audio_summary(model: Codec, clip: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
    """Original, full-RVQ and RVQ-1-only reconstructions of one clip (float32 [samples])."""
    codes = api.encode(model, clip, sample_rate)
    full, rvq1 = api.decode_batch(model, [codes]), api.decode_batch(model, [codes[:1]])
    n = len(clip)
    return {"original": clip, "full_rvq": full[0][:n], "rvq1_only": rvq1[0][:n]}


def _write_audio(writer, step: int, audios: dict[str, np.ndarray], sr: int, out_dir: str):
    import soundfile  # Imported here: only the summaries need it.

    writer.write_audios(
        step, {f"audio/{k}": v[None, :, None] for k, v in audios.items()}, sample_rate=sr
    )
    paths.makedirs(out_dir)
    for name, wav in audios.items():
        with paths.local_output(os.path.join(out_dir, f"{step:08d}_{name}.wav")) as path:
            soundfile.write(path, np.clip(wav, -1, 1), sr)


# --- the loop ----------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    step: int
    metrics: dict[str, float]
    checkpoint_steps: list[int]


def train(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    data_dir: str | None = None,
    clips: Sequence[np.ndarray] | None = None,
    summary_clip: np.ndarray | None = None,
    on_batch: Callable[[int, dict[str, np.ndarray]], None] | None = None,
    progress: bool = True,
    teacher_set: tuple[Sequence[np.ndarray], Sequence[str]] | None = None,
) -> TrainResult:
    """Trains (or resumes) the codec of `config` up to `total_steps(config)`.

    Audio comes from `config.data.corpus` in the TFDS `data_dir`, or from `clips`
    (in-memory waveforms at the codec rate: tests, notebooks). With teacher.kind 'ctc' the
    content teacher is loaded from teacher.path (default <workdir>/codec/teacher) or first
    trained there on the training clips' transcripts (or `teacher_set`: waveforms and
    transcripts). The audio summaries use the
    first validation clip (or `summary_clip`). `on_batch(step, batch)` sees every batch.

    SIGTERM / SIGINT while the data or the teacher load stop at once (no codec step is
    unsaved then); during the steps, after saving a checkpoint (`gpa_jax.preemption`).
    """
    # A full disk during a save: one DiskFullError, not a traceback per Orbax thread.
    with (
        preemption.watch(
            "codec training", immediate=True, note="a rerun resumes from the last checkpoint"
        ),
        ckpt_lib.quiet_disk_full(),
    ):
        return _train(
            config, workdir, data_dir, clips, summary_clip, on_batch, progress, teacher_set
        )


def _train(
    config, workdir, data_dir, clips, summary_clip, on_batch, progress, teacher_set
) -> TrainResult:
    from tqdm import tqdm

    sr = int(config.codec.sample_rate)
    tc = config.train
    check_trainable(config)
    if clips is None:
        store = codec_data.train_clips(config, data_dir, workdir)
        logging.info(
            "codec: %d training clips from %s/%s (skipped: %s)",
            len(store),
            config.data.corpus,
            config.data.split,
            store.index["skipped"] or "none",
        )
        clips = store
    teacher_model, features = None, None
    if config.teacher.kind == "ctc":
        if teacher_set is None and isinstance(clips, codec_data.ClipStore):
            teacher_set = clips.transcribed(float(config.teacher.ctc_max_seconds))
        teacher_model = ensure_teacher(
            config, workdir, data_dir=data_dir, train_set=teacher_set, progress=progress
        )
    elif config.teacher.kind == "hubert_features":
        features = codec_data.FeatureStore(config.teacher.path)
        if features.dim != int(config.teacher.dim) or features.frame_hop != math.prod(
            config.codec.strides
        ):
            raise ValueError(
                f"feature store {config.teacher.path}: dim {features.dim}, hop "
                f"{features.frame_hop}; the config wants teacher.dim {config.teacher.dim} and "
                f"the codec hop {math.prod(config.codec.strides)}"
            )
    if summary_clip is None and data_dir is not None:
        summary_clip = codec_data.load_clips(
            config.data.corpus,
            config.data.validation_split,
            data_dir=data_dir,
            sample_rate=sr,
            max_seconds=config.data.max_seconds,
            limit=1,
        ).audio[0]
    if summary_clip is not None:
        summary_clip = np.asarray(summary_clip, np.float32)[: int(tc.summary_seconds * sr)]

    dataset = codec_data.crop_dataset(
        clips,
        crop_samples=int(round(config.data.crop_seconds * sr)),
        batch_size=int(config.data.batch_size),
        seed=int(config.seed),
        num_workers=int(config.data.num_workers),
        features=features,
    )
    iterator = iter(dataset)
    state = CodecState.create(config)
    if state.model.teacher is not None:  # RVQ-1 = its codes: the codec carries it, frozen
        nnx.update(state.model.teacher, nnx.state(teacher_model))
        teacher_model = None
    manager = checkpoint_manager(checkpoint_dir(workdir), keep=int(tc.keep_checkpoints))
    guard = recovery.DivergenceGuard(float(tc.divergence_factor), what="codec training")
    found = recovery.restore_newest(
        manager, lambda s: restore_checkpoint(manager, s, state), what="codec"
    )
    start = 0
    if found is not None:
        start, data_state = found
        iterator.set_state(data_state)
        guard.last_good = start
        logging.info("codec: resumed from step %d in %s", start, checkpoint_dir(workdir))
    num_steps = total_steps(config)
    generator_step, discriminator_step = make_steps(config)
    writer = _create_writer(os.path.join(codec_dir(workdir), "tensorboard"))
    audio_dir = os.path.join(codec_dir(workdir), "audio")
    pending: list[dict[str, np.ndarray]] = []
    last: dict[str, float] = {}
    bar = tqdm(total=num_steps, initial=start, desc="codec", unit="step", disable=not progress)
    t0 = time.time()
    step = start
    try:
        with preemption.watch("codec training"):
            for step in range(start + 1, num_steps + 1):
                batch = next(iterator)
                if on_batch is not None:
                    on_batch(step, batch)
                jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
                metrics, recon = generator_step(
                    state.model, state.optimizer, state.disc, teacher_model, jbatch
                )
                if state.disc is not None:
                    metrics["d_loss"] = discriminator_step(
                        state.disc, state.disc_optimizer, jbatch["audio"], recon
                    )
                host = jax.device_get(metrics)
                bad = [k for k in ("total", "d_loss") if k in host and not math.isfinite(host[k])]
                if bad:
                    terms = ", ".join(f"{k}={float(v):.4g}" for k, v in host.items() if v.ndim == 0)
                    raise FloatingPointError(
                        f"codec training: non-finite {'/'.join(bad)} at step {step} ({terms}); "
                        f"last checkpoint: step {manager.latest_step()}"
                    )
                guard.update(step, float(host["total"]))
                pending.append(host)
                bar.update(1)
                if step % tc.log_every == 0 or step == num_steps:
                    last = _scalars(pending)
                    last["steps_per_second"] = len(pending) / max(time.time() - t0, 1e-9)
                    writer.write_scalars(step, last)
                    bar.set_postfix(loss=f"{last['loss/total']:.3g}")
                    pending, t0 = [], time.time()
                stopping = preemption.requested() is not None  # SIGTERM/SIGINT: save here
                at_end = step == num_steps
                if (
                    summary_clip is not None
                    and not stopping
                    and (step % tc.summary_every == 0 or at_end)
                ):
                    audios = audio_summary(state.model, summary_clip, sr)
                    _write_audio(writer, step, audios, sr, audio_dir)
                if step % tc.checkpoint_every == 0 or at_end or stopping:
                    metrics = guard.checkpoint_metrics(step)
                    save_checkpoint(manager, step, state, iterator.get_state(), metrics)
                if stopping:
                    preemption.stop(f"checkpoint {step} saved in {checkpoint_dir(workdir)}")
        saved = list(manager.all_steps())
    finally:
        bar.close()
        writer.close()
        ckpt_lib.close_manager(manager)
    logging.info("codec: finished at step %d", step)
    return TrainResult(step, last, saved)
