"""Small CTC character recognisers: the offline content teacher and the RVQ content probe.

`CTCRecognizer` is a 1-D conv stack over frame features [b, T, F] (residual blocks of
conv -> LayerNorm -> GELU) with a linear CTC head over `VOCAB` (blank = 0). Two users:

- `teacher.ContentTeacher` runs it on per-utterance-normalised log-mel (100 Hz, one
  stride-2 conv down to the codec's 50 Hz), trained on the corpus transcripts across all
  training voices, so its hidden features follow the words, not the voice (the role
  HuBERT plays in SpeechTokenizer);
- `probe` trains one per RVQ layer on that layer's code embeddings and reports the
  character error rate on held-out speech.

`train_ctc` is the shared loop: length-bucketed padded batches (one compile per bucket),
optax Adam with warm-up + cosine, CTC loss normalised by transcript length. Error rates
come from `jiwer.cer` on greedy CTC decodes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx

from gpa_jax import paths, preemption, recovery
from gpa_jax.codec.rvq import CodebookState

# `gpa_jax.text.normalize_transcript` leaves exactly these characters (a-z, 0-9, ', space).
VOCAB = " '0123456789abcdefghijklmnopqrstuvwxyz"
BLANK = 0
VOCAB_SIZE = len(VOCAB) + 1
_CHAR_ID = {c: i + 1 for i, c in enumerate(VOCAB)}


def text_to_ids(text: str) -> np.ndarray:
    """Normalised transcript -> int32 label ids (1..len(VOCAB)); other characters raise."""
    bad = sorted({c for c in text if c not in _CHAR_ID})
    if bad:
        raise ValueError(
            f"transcript {text[:60]!r} has characters {bad} outside the CTC vocabulary "
            f"{VOCAB!r}; normalise it with gpa_jax.text.normalize_transcript first"
        )
    return np.asarray([_CHAR_ID[c] for c in text], np.int32)


def greedy_decode(logits: np.ndarray, num_frames: int) -> str:
    """Best-path CTC decode of one utterance's logits [T, VOCAB_SIZE] (first num_frames)."""
    best = np.argmax(np.asarray(logits)[:num_frames], axis=-1)
    out, prev = [], BLANK
    for k in best:
        if k != prev and k != BLANK:
            out.append(VOCAB[k - 1])
        prev = k
    return " ".join("".join(out).split())


def forced_alignment(log_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The most likely CTC path of `labels` through one utterance's frames: int32 [T], the
    index (0..L-1) of the label each frame emits, or -1 for a blank frame.

    log_probs: [T, VOCAB_SIZE] log-softmax of the frames (T >= the path's minimum length,
    L plus one per repeated neighbour pair); labels: int [L], ids 1..VOCAB_SIZE-1. Viterbi
    over CTC's extended sequence (blank, l1, blank, l2, ..., blank): a state stays, moves
    to the next, or skips a blank between two different labels; the path ends in the last
    label or the blank after it. (No library in the dependencies aligns CTC; torchaudio's
    `forced_align` does the same in PyTorch.)"""
    log_probs = np.asarray(log_probs, np.float64)
    labels = np.asarray(labels, np.int64)
    frames, num = log_probs.shape[0], len(labels)
    if num == 0:
        return np.full(frames, -1, np.int32)
    ext = np.full(2 * num + 1, BLANK, np.int64)
    ext[1::2] = labels
    states = len(ext)
    skip = np.zeros(states, bool)  # state s may be entered from s - 2
    skip[3::2] = labels[1:] != labels[:-1]
    need = num + int(np.sum(labels[1:] == labels[:-1]))
    if frames < need:
        raise ValueError(f"{frames} frames cannot emit {num} labels ({need} frames needed)")
    emit = log_probs[:, ext]  # [T, S]
    score = np.full(states, -np.inf)
    score[:2] = emit[0, :2]
    back = np.zeros((frames, states), np.int8)  # 0 stay, 1 from s-1, 2 from s-2
    for t in range(1, frames):
        prev1 = np.concatenate([[-np.inf], score[:-1]])
        prev2 = np.where(skip, np.concatenate([[-np.inf, -np.inf], score[:-2]]), -np.inf)
        options = np.stack([score, prev1, prev2])
        back[t] = np.argmax(options, axis=0)
        score = options[back[t], np.arange(states)] + emit[t]
    state = states - 1 if score[-1] >= score[-2] else states - 2
    path = np.empty(frames, np.int64)
    for t in range(frames - 1, -1, -1):
        path[t] = state
        state -= int(back[t, state])
    return np.where(path % 2 == 1, (path - 1) // 2, -1).astype(np.int32)


def char_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus-level CER (jiwer), with empty hypotheses counted as all deletions."""
    import jiwer

    return float(jiwer.cer(list(references), [h if h else "" for h in hypotheses]))


class ConvBlock(nnx.Module):
    """x + GELU(LayerNorm(conv_k(x))), with padded frames zeroed after the block."""

    def __init__(self, width: int, kernel_size: int, dilation: int = 1, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(
            width, width, (kernel_size,), padding="SAME", kernel_dilation=(dilation,), rngs=rngs
        )
        self.norm = nnx.LayerNorm(width, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
        return (x + jax.nn.gelu(self.norm(self.conv(x)))) * mask


class CTCRecognizer(nnx.Module):
    """[b, T, in_dim] -> (logits [b, T', VOCAB_SIZE], hidden per block) with T' = ceil(T / stride)."""

    def __init__(
        self,
        in_dim: int,
        hidden: int,
        num_layers: int,
        kernel_size: int = 5,
        stride: int = 1,
        dilations: tuple[int, ...] = (1,),
        *,
        rngs: nnx.Rngs,
    ):
        """dilations: block i uses dilations[i % len(dilations)] (a cycle such as (1, 2, 4)
        widens the context at no extra cost)."""
        if stride not in (1, 2):
            raise ValueError(f"CTCRecognizer stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.hidden = hidden
        self.conv_in = nnx.Conv(
            in_dim, hidden, (kernel_size,), strides=(stride,), padding="SAME", rngs=rngs
        )
        self.blocks = nnx.List(
            [
                ConvBlock(hidden, kernel_size, dilations[i % len(dilations)], rngs=rngs)
                for i in range(num_layers)
            ]
        )
        self.head = nnx.Linear(hidden, VOCAB_SIZE, rngs=rngs)

    def output_mask(self, mask: jax.Array) -> jax.Array:
        """Input frame mask [b, T] -> output frame mask [b, T'] (float)."""
        if self.stride == 1:
            return mask.astype(jnp.float32)
        return mask[:, :: self.stride].astype(jnp.float32)

    def features(self, x: jax.Array, mask: jax.Array) -> list[jax.Array]:
        """Hidden states [b, T', hidden] after each block (padded frames zero)."""
        out_mask = self.output_mask(mask)[..., None]
        h = jax.nn.gelu(self.conv_in(x * mask[..., None].astype(x.dtype))) * out_mask
        hidden = []
        for block in self.blocks:
            h = block(h, out_mask)
            hidden.append(h)
        return hidden

    def __call__(self, x: jax.Array, mask: jax.Array) -> tuple[jax.Array, list[jax.Array]]:
        hidden = self.features(x, mask)
        return self.head(hidden[-1]), hidden


def ctc_loss(logits: jax.Array, frame_mask: jax.Array, labels: jax.Array, label_mask: jax.Array):
    """Mean over the batch of CTC loss / transcript length."""
    per = optax.ctc_loss(logits, 1.0 - frame_mask, labels, 1.0 - label_mask, blank_id=BLANK)
    return jnp.mean(per / jnp.maximum(jnp.sum(label_mask, -1), 1.0))


@dataclasses.dataclass
class CTCExample:
    """One training utterance: model input (waveform [n] or frames [T, F]) and its text."""

    inputs: np.ndarray
    text: str


def _round_up(n: int, multiple: int) -> int:
    return max(1, -(-n // multiple)) * multiple


def padded_batch(
    inputs: Sequence[np.ndarray],
    texts: Sequence[str] | None,
    *,
    length_multiple: int,
    label_multiple: int = 64,
) -> dict[str, np.ndarray]:
    """Zero-pads inputs (axis 0) to a bucket of `length_multiple` and labels to 64s."""
    lengths = np.asarray([len(x) for x in inputs], np.int32)
    t = _round_up(int(lengths.max()), length_multiple)
    x = np.zeros((len(inputs), t) + inputs[0].shape[1:], np.float32)
    mask = np.zeros((len(inputs), t), np.float32)
    for i, a in enumerate(inputs):
        x[i, : len(a)] = a
        mask[i, : len(a)] = 1.0
    batch = {"inputs": x, "mask": mask, "lengths": lengths}
    if texts is not None:
        ids = [text_to_ids(s) for s in texts]
        n = _round_up(max(len(i) for i in ids), label_multiple)
        labels = np.zeros((len(ids), n), np.int32)
        label_mask = np.zeros((len(ids), n), np.float32)
        for i, a in enumerate(ids):
            labels[i, : len(a)] = a
            label_mask[i, : len(a)] = 1.0
        batch["labels"], batch["label_mask"] = labels, label_mask
    return batch


def length_batches(
    lengths: Sequence[int], batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Index batches of similar lengths (sorted, chunked, chunk order shuffled)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    chunks = [c for c in chunks if len(c) == batch_size] or chunks
    rng.shuffle(chunks)
    return chunks


@dataclasses.dataclass
class CTCTrainResult:
    steps: int
    final_loss: float
    seconds: float


def train_ctc(
    model: nnx.Module,
    apply_fn: Callable[[nnx.Module, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    examples: Sequence[CTCExample],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    length_multiple: int,
    seed: int,
    warmup_steps: int = 50,
    desc: str = "ctc",
    progress: bool = True,
    checkpoint_dir: str | None = None,
    checkpoint_every: int = 0,
    stop_at: int | None = None,
    divergence_factor: float = 0.0,
) -> CTCTrainResult:
    """Trains `model` with CTC: apply_fn(model, inputs, mask) -> (logits, frame_mask), or
    (logits, frame_mask, extra_loss) for a model with a term of its own (a VQ's commitment).

    Batches group utterances of similar length (bucketed by `length_multiple` input
    steps, so each bucket compiles once). Adam, linear warm-up then cosine decay,
    global-norm clipping at 1. With `checkpoint_dir`, model and optimizer are saved every
    `checkpoint_every` steps and a rerun resumes from the latest save; the batch order is
    a pure function of `seed`, so the resumed run sees exactly the batches it would have.
    stop_at: end after that step (of the `steps`-long schedule), as a preempted run would.
    With `checkpoint_dir`, resume falls back past broken checkpoints, SIGTERM/SIGINT save
    the step they arrive in and stop (`gpa_jax.preemption`), a loss spike above
    `divergence_factor` x the running loss never evicts the last good save
    (`gpa_jax.recovery`), and a full disk during a save is one `DiskFullError` naming the
    intact step. Without one, a signal stops the run at once.
    """
    from tqdm import tqdm

    from gpa_jax.training import checkpoint as ckpt_lib

    if not examples:
        raise ValueError(f"{desc}: no training examples")
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup_steps, max(1, steps // 10)), max(steps, 2)
    )
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(schedule))
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    def loss_fn(model, batch):
        out = apply_fn(model, batch["inputs"], batch["mask"])
        loss = ctc_loss(out[0], out[1], batch["labels"], batch["label_mask"])
        return loss + out[2] if len(out) == 3 else loss

    @nnx.jit
    def step(model, optimizer, batch):
        loss, grads = nnx.value_and_grad(loss_fn)(model, batch)
        optimizer.update(model, grads)
        return loss

    rng = np.random.default_rng(seed)
    lengths = [len(e.inputs) for e in examples]
    queue: list[np.ndarray] = []

    def next_indices() -> np.ndarray:
        nonlocal queue
        if not queue:
            queue = length_batches(lengths, batch_size, rng)
        return queue.pop()

    manager, start = None, 0
    guard = recovery.DivergenceGuard(divergence_factor, what=desc)
    if checkpoint_dir:
        manager = _checkpoint_manager(checkpoint_dir)
        found = recovery.restore_newest(
            manager, lambda s: _restore(manager, s, model, optimizer), what=desc
        )
        if found is not None:
            start = guard.last_good = found[0]
            for _ in range(start):  # replay the batch order up to the saved step
                next_indices()
            logging.info("%s: resumed from step %d in %s", desc, start, checkpoint_dir)
    losses: list[float] = []
    t0 = time.time()
    bar = tqdm(total=steps, initial=start, desc=desc, unit="step", disable=not progress)
    try:
        # Without a checkpoint directory there is nothing to save: a signal stops at once.
        # A full disk during a save: one DiskFullError, not a traceback per Orbax thread.
        with preemption.watch(desc, immediate=manager is None), ckpt_lib.quiet_disk_full():
            for i in range(start, min(steps, stop_at or steps)):
                idx = next_indices()
                batch = padded_batch(
                    [examples[j].inputs for j in idx],
                    [examples[j].text for j in idx],
                    length_multiple=length_multiple,
                )
                jbatch = {k: jnp.asarray(v) for k, v in batch.items()}
                loss = float(step(model, optimizer, jbatch))
                if not math.isfinite(loss):
                    raise FloatingPointError(f"{desc}: non-finite CTC loss at step {i + 1}")
                guard.update(i + 1, loss)
                losses.append(loss)
                bar.update(1)
                if (i + 1) % 25 == 0:
                    bar.set_postfix(loss=f"{np.mean(losses[-25:]):.3f}")
                    logging.log_every_n_seconds(
                        logging.INFO, "%s: step %d loss %.3f", 30, desc, i + 1,
                        np.mean(losses[-25:]),
                    )  # fmt: skip
                stopping = manager is not None and preemption.requested() is not None
                if manager is not None and (
                    stopping or (checkpoint_every and (i + 1) % checkpoint_every == 0)
                ):
                    _save(manager, i + 1, model, optimizer, guard.checkpoint_metrics(i + 1))
                if stopping:
                    preemption.stop(f"checkpoint {i + 1} saved in {checkpoint_dir}")
    finally:
        bar.close()
        if manager is not None:
            ckpt_lib.close_manager(manager)
    final = float(np.mean(losses[-25:])) if losses else float("nan")
    return CTCTrainResult(steps, final, time.time() - t0)


# What a saved recogniser holds: its params and, for a VQ bottleneck, the EMA codebooks.
# (The VQ's random stream is not saved: a resumed VQ teacher draws fresh dead-code picks.)
SAVED = (nnx.Param, CodebookState)


def _checkpoint_manager(directory: str):
    import orbax.checkpoint as ocp

    # The newest save, and the newest undiverged one when they differ (gpa_jax.recovery).
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(
        [ocp.checkpoint_managers.LatestN(n=1), recovery.LastGood()]
    )
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True)
    return ocp.CheckpointManager(paths.absolute(directory), options=options)


def _save(manager, step: int, model: nnx.Module, optimizer: nnx.Optimizer, metrics=None) -> None:
    import orbax.checkpoint as ocp

    from gpa_jax.training import checkpoint as ckpt_lib

    items = {
        "model": nnx.to_pure_dict(nnx.state(model, SAVED)),
        "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
    }
    args = ocp.args.Composite(**{k: ocp.args.StandardSave(v) for k, v in items.items()})
    # A full disk: one DiskFullError naming the intact step, the partial one removed.
    ckpt_lib.save_step(manager, step, args, metrics=metrics, wait=True)


def _restore(manager, step: int, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
    import orbax.checkpoint as ocp

    states = {"model": nnx.state(model, SAVED), "optimizer": nnx.state(optimizer)}
    args = {
        k: ocp.args.StandardRestore(
            jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(v))
        )
        for k, v in states.items()
    }
    restored = manager.restore(step, args=ocp.args.Composite(**args))
    for name, state in states.items():
        nnx.replace_by_pure_dict(state, restored[name])
    nnx.update(model, states["model"])
    nnx.update(optimizer, states["optimizer"])


def batched_logits(
    model: nnx.Module,
    apply_fn: Callable[[nnx.Module, jax.Array, jax.Array], tuple[jax.Array, jax.Array]],
    inputs: Sequence[np.ndarray],
    *,
    batch_size: int,
    length_multiple: int,
) -> list[np.ndarray]:
    """Each input's CTC logits [its frames, VOCAB_SIZE], in order (batched by similar
    length, padded to `length_multiple` so few shapes compile)."""
    jitted = nnx.jit(apply_fn)
    out: list[np.ndarray | None] = [None] * len(inputs)
    order = np.argsort([len(x) for x in inputs], kind="stable")
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        batch = padded_batch([inputs[j] for j in idx], None, length_multiple=length_multiple)
        logits, frame_mask = jitted(model, jnp.asarray(batch["inputs"]), jnp.asarray(batch["mask"]))
        logits, frames = np.asarray(logits), np.asarray(frame_mask).sum(-1).astype(int)
        for row, j in enumerate(idx):
            out[j] = logits[row, : frames[row]]
    return out  # type: ignore[return-value]


def transcribe(model: nnx.Module, apply_fn, inputs: Sequence[np.ndarray], **batching: int) -> list[str]:
    """Greedy CTC transcripts of `inputs`, in order (`batching`: batched_logits' batch_size
    and length_multiple)."""
    return [greedy_decode(x, len(x)) or "" for x in batched_logits(model, apply_fn, inputs, **batching)]


def save_module(module: nnx.Module, directory: str, meta: dict[str, Any]) -> None:
    """Params of `module` (Orbax) + meta.json under `directory` (overwritten)."""
    import contextlib
    import os

    import orbax.checkpoint as ocp

    from gpa_jax.errors import DiskFullError, is_disk_full
    from gpa_jax.training import checkpoint as ckpt_lib

    directory = paths.absolute(directory)
    paths.makedirs(directory)
    params = nnx.to_pure_dict(nnx.state(module, SAVED))
    target = os.path.join(directory, "params")
    try:
        with ckpt_lib.quiet_disk_full(), ocp.StandardCheckpointer() as ckpt:
            ckpt.save(target, params, force=True)
    except Exception as error:
        if not is_disk_full(error):
            raise
        # Nothing under `directory` is marked complete (no meta.json): the job's own
        # checkpoints stay, so a rerun with space back resumes and saves again.
        with contextlib.suppress(OSError):
            paths.rmtree(target)
        raise DiskFullError(
            f"no space left on device saving the trained model to {target}; its training "
            "checkpoints are kept: free space and rerun to resume and save it"
        ) from error
    # meta.json marks the model complete (load_module, ensure_teacher): written last, whole.
    paths.atomic_write_json(os.path.join(directory, "meta.json"), meta, indent=1, sort_keys=True)


def load_module(module: nnx.Module, directory: str) -> dict[str, Any]:
    """Restores params saved by `save_module` into `module`; returns its meta.json."""
    import os

    import orbax.checkpoint as ocp

    directory = paths.absolute(directory)
    meta_path = os.path.join(directory, "meta.json")
    if not paths.isfile(meta_path):
        raise FileNotFoundError(f"no trained model in {directory!r} (missing meta.json)")
    state = nnx.state(module, SAVED)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.to_pure_dict(state))
    with ocp.StandardCheckpointer() as ckpt:
        restored = ckpt.restore(os.path.join(directory, "params"), abstract)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(module, state)
    return paths.read_json(meta_path)
