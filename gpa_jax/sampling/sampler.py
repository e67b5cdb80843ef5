"""The sampler: task requests -> prompts (the SeqIO tasks' own layout) -> batched decode.

    sampler = Sampler.from_checkpoint(workdir + "/checkpoints", vocab)   # params only
    results = sampler.generate([
        Request.asr(source=codes),                          # codes [n_q, T] -> text
        Request.tts(text="hello there", reference=ref),     # -> RVQ-1 codes [T]
        Request.vc(source=codes, reference=ref),            # -> RVQ-1 codes [T]
        Request.se(source=noisy_codes),                     # -> RVQ-1 codes [T]
    ])
    for r in results: print(r.id, r.error or r.text or r.rvq1.shape)

Prompts are built by `gpa_jax.tasks.layout` (the functions the SeqIO tasks assemble
training examples with), read as the trainer reads them: [PROMPT_START] ++ inputs, all of
it prefix. Each request gets its task's sampling defaults (`sampling_config`: ASR greedy,
TTS/VC sampled; a request may override them), an output id range (text ids for ASR,
RVQ-1 ids for TTS/VC; <eos> always allowed) and a new-token budget derived from its input
(module doc of `gpa_jax.sampling.config`), so a generation that never emits <eos> stops.

A bad request (unknown task, empty text, no reference or source, codes out of range,
over-long input) gets a `Result` with `error` set; the other requests are served.
Requests are decoded in chunks of up to `max_batch`, sorted by prompt length; batch size,
prompt length and step bound are bucketed (`gpa_jax.sampling.decode`), so a stream of
requests reuses a handful of compiled programs.

Audio: codes come from and go to `gpa_jax.codec.api` (encode / decode). The LM makes
RVQ-1 only; the acoustic stage that adds RVQ-2..N is a callable passed as `acoustic`,

    acoustic(rvq1_codes: int [T], prompt_codes: int [n_q, T_ref]) -> codes int [n_q, T]

called for every TTS/VC/SE result with the request's reference codes as the prompt
(SE, which has no reference: its noisy source's codes, every layer; see `Request.se`) (all
results of a `generate` call at once through `acoustic.complete_batch(rvq1s, prompts)`
when it has one, e.g. `gpa_jax.acoustic.api.AcousticStage`); its output is
`Result.codes`: codes int [n_q, T] for `gpa_jax.codec.api.decode` when the stage's
`output` is "codes" (NAR, greedy), else a latent [T, D] for
`gpa_jax.acoustic.api.decode_latent` (vocoder; NAR's default expected latent).

Continuous audio inputs (`model.audio_input = "continuous"`, LauraGPT): a request also
carries the token-aligned log-mel rows of its source / reference
(`gpa_jax.audio.features.token_aligned_log_mel`, one row per codec frame, cropped like
the codes); the prompt's audio positions read them (prefill), its codec ids there are
placeholders. `launch.sample` computes codes and rows from the same wav; the evaluation
reads both from the token shards. The hybrid variant (`"hybrid"`, WHISPER-GPT) takes the
same rows and reads them beside the codec ids (prefill); every generated position reads
the model's null row (`gpa_jax.models.transformer.HybridFusion`), as in training.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from gpa_jax import paths
from gpa_jax import sharding as sharding_lib
from gpa_jax.models import LMConfig, make_lm
from gpa_jax.sampling import decode as decode_lib
from gpa_jax.sampling import joint_ctc
from gpa_jax.sampling.config import TASKS, asr_decoding, check_params, lm_sampling
from gpa_jax.tasks import layout
from gpa_jax.tasks.config import OPT_IN_TASKS, registered_tasks
from gpa_jax.tasks.vocab import SpeechVocabulary
from gpa_jax.text import normalize_transcript, tts_prompt_text

Acoustic = Callable[[np.ndarray, np.ndarray], np.ndarray]
DEFAULT_REF_MAX_FRAMES = 150
DEFAULT_REF_MIN_FRAMES = 50


class RequestError(ValueError):
    """A request that cannot be served; the message says what was expected."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    """temperature 0 = greedy; top_k 0 / top_p 1 / repetition_penalty 1 = off."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    @classmethod
    def from_config(cls, section: Any) -> SamplingParams:
        return cls(
            float(section.temperature),
            int(section.top_k),
            float(section.top_p),
            float(section.repetition_penalty),
        )


@dataclasses.dataclass
class Request:
    """One generation. Codes are int arrays [n_q, frames] (or [frames] for RVQ-1 only).

    tts: text + reference; asr: source; vc: source + reference; se: source (the noisy
    speech). `params` and `max_new_tokens` override the task defaults (the budget is
    still capped to fit).
    """

    task: str
    text: str | None = None
    source: np.ndarray | None = None
    reference: np.ndarray | None = None
    params: SamplingParams | None = None
    max_new_tokens: int | None = None
    seed: int = 0
    id: str = ""
    # Continuous-input models only: token-aligned log-mel rows [frames, F] of the source /
    # reference, frame for frame with their codes.
    source_features: np.ndarray | None = None
    reference_features: np.ndarray | None = None

    @classmethod
    def asr(cls, source: np.ndarray, **kwargs: Any) -> Request:
        return cls("asr", source=source, **kwargs)

    @classmethod
    def tts(cls, text: str, reference: np.ndarray, **kwargs: Any) -> Request:
        return cls("tts", text=text, reference=reference, **kwargs)

    @classmethod
    def vc(cls, source: np.ndarray, reference: np.ndarray, **kwargs: Any) -> Request:
        return cls("vc", source=source, reference=reference, **kwargs)

    @classmethod
    def se(cls, source: np.ndarray, **kwargs: Any) -> Request:
        """Speech enhancement of `source`, the noisy speech's codes. The LM reads its RVQ-1;
        the acoustic stage gets all its layers as the voice prompt: the only recording of
        that voice a caller has (the LM's own RVQ-1 has no RVQ-2..N to prompt with), and
        the one the SE examples' clean targets share a speaker with."""
        return cls("se", source=source, **kwargs)

    @property
    def voice_prompt(self) -> np.ndarray | None:
        """The codes the acoustic stage continues: the reference, SE's noisy source."""
        return self.source if self.task == "se" else self.reference


@dataclasses.dataclass
class Result:
    """What one request produced (or why not: `error`)."""

    id: str
    task: str
    error: str | None = None
    tokens: np.ndarray | None = None  # generated ids, <eos> excluded
    stop: str | None = None  # "eos" | "max_length"
    text: str | None = None  # asr
    rvq1: np.ndarray | None = None  # tts/vc/se: int32 [T] RVQ-1 codes
    # tts/vc/se with an acoustic stage: what it returns (codes [n_q, T] or latent [T, D])
    codes: np.ndarray | None = None
    prompt_length: int = 0
    max_new_tokens: int = 0
    score: float | None = None  # asr by the joint search: the chosen hypothesis's joint log-score

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclasses.dataclass
class _Prepared:
    index: int
    request: Request
    prompt: np.ndarray
    max_new: int
    params: SamplingParams
    id_range: tuple[int, int]
    # Continuous-input models: (features [len(prompt), F], mask [len(prompt)]).
    audio: tuple[np.ndarray, np.ndarray] | None = None


def _prompt_audio(task, vocab, text, ref_rows, src_rows, ref_layers: int):
    """(features [len(prompt), F], mask) of a continuous-input prompt, [PROMPT_START] ++
    inputs: each position reads the row of the frame it holds (`layout.input_frame_segments`,
    the tasks' own map), zeros and mask 0 where it holds none."""
    table = np.concatenate([r for r in (ref_rows, src_rows) if r is not None]).astype(np.float32)
    n_ref = 0 if ref_rows is None else len(ref_rows)
    frames = layout.join([[layout.NO_FRAME], *layout.input_frame_segments(
        task, vocab, text=text, ref_layers=ref_layers,
        reference=None if ref_rows is None else np.arange(n_ref),
        source=None if src_rows is None else n_ref + np.arange(len(src_rows)),
    )])  # fmt: skip
    mask = frames != layout.NO_FRAME
    features = np.zeros((len(frames), table.shape[1]), np.float32)
    features[mask] = table[frames[mask]]
    return features, mask.astype(np.int32)


def _batch_multiple(mesh: jax.sharding.Mesh | None, rules: Any) -> int:
    """Rows must divide over the mesh axes that 'batch' maps to."""
    if mesh is None or rules is None:
        return 1
    spec = sharding_lib.logical_to_mesh_spec(("batch",), rules)[0]
    if spec is None:
        return 1
    axes = (spec,) if isinstance(spec, str) else tuple(spec)
    return math.prod(mesh.shape[a] for a in axes)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


def config_from_checkpoint(ckpt_dir: str, step: int | None = None) -> ml_collections.ConfigDict:
    """The training config saved in a checkpoint's `meta` item (latest step by default)."""
    from gpa_jax.training import checkpoint as ckpt

    steps = ckpt.saved_steps(ckpt_dir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint steps in {ckpt_dir}")
    step = steps[-1] if step is None else int(step)
    path = os.path.join(ckpt_dir, str(step), ckpt.META, "metadata")
    if not paths.exists(path):
        raise FileNotFoundError(
            f"{path} missing: checkpoint step {step} has no saved config; pass config="
        )
    meta = paths.read_json(path)
    if "config" not in meta:
        raise KeyError(f"{path} has no 'config' entry; pass config=")
    return ml_collections.ConfigDict(meta["config"])


class Sampler:
    """Serves asr/tts/vc (and se, for an LM trained with it) requests with one LM (see
    module docstring)."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params: nnx.State | nnx.Module,
        vocab: SpeechVocabulary,
        *,
        mesh: jax.sharding.Mesh | None = None,
        sampling: ml_collections.ConfigDict | None = None,
        acoustic: Acoustic | None = None,
    ):
        """config: the LM's top-level config (model, sharding_rules, optional tasks);
        params: the model's nnx.State (e.g. `restore_params_only`) or a DecoderLM."""
        self.config = config
        self.vocab = vocab
        self.mesh = mesh
        self.sampling = sampling if sampling is not None else lm_sampling(config)
        self.acoustic = acoustic
        self.cfg = LMConfig.from_config(config.model)
        if vocab.vocab_size > self.cfg.vocab_size:
            raise ValueError(
                f"vocabulary {vocab} has {vocab.vocab_size} ids but the model only "
                f"{self.cfg.vocab_size}"
            )
        if isinstance(params, nnx.Module):
            model = params
        else:
            graphdef, _ = nnx.split(nnx.eval_shape(lambda: make_lm(config, rngs=nnx.Rngs(0))))
            model = nnx.merge(graphdef, params)
        self.model = model
        self.decoder = decode_lib.Decoder(model, mesh)
        self.batch_multiple = _batch_multiple(mesh, getattr(model, "rules", None))
        self._init_asr_search()
        tasks = config.get("tasks") if hasattr(config, "get") else None
        s = self.sampling
        self.ref_max_frames = int(
            s.ref_max_frames
            or (tasks.ref_max_frames if tasks is not None else DEFAULT_REF_MAX_FRAMES)
        )
        self.ref_layers = int(s.ref_layers or (tasks.ref_layers if tasks is not None else 1))
        self.ref_min_frames = int(tasks.ref_min_frames if tasks is not None else DEFAULT_REF_MIN_FRAMES)
        # TTS prompts spell what the LM was trained on (config.tasks.tts_text).
        self.tts_text = str(tasks.get("tts_text", "transcript")) if tasks is not None else "transcript"
        # The opt-in tasks (SE) are served only by an LM trained with them.
        self.untrained = tuple(
            t for t in OPT_IN_TASKS if tasks is None or t not in registered_tasks(tasks)
        )
        if self.ref_layers > vocab.num_audio_streams:
            raise ValueError(
                f"ref_layers={self.ref_layers} but the vocabulary has "
                f"{vocab.num_audio_streams} audio streams"
            )
        self.max_total_len = int(s.max_total_len or self.cfg.max_len)
        if self.max_total_len > self.cfg.max_len:
            raise ValueError(
                f"sampling.max_total_len={self.max_total_len} > model max_len {self.cfg.max_len}"
            )

    def _init_asr_search(self) -> None:
        """The joint CTC/attention search of greedy ASR requests (sampling.asr.beam /
        ctc_weight; `joint_ctc`), or None for plain greedy decoding."""
        asr = self.sampling.asr
        self.asr_beam = int(asr.beam)
        self.asr_ctc_weight = float(asr.ctc_weight)
        has_ctc = getattr(self.model, "ctc_proj", None) is not None
        if self.asr_ctc_weight > 0 and not has_ctc:
            logging.warning(
                "sampling.asr.ctc_weight=%s but the LM has no CTC head (trained with "
                "model.ctc_weight=0): ASR searches on attention alone", self.asr_ctc_weight,
            )  # fmt: skip
            self.asr_ctc_weight = 0.0
        searching = self.asr_beam > 1 or self.asr_ctc_weight > 0
        self.asr_search = (
            joint_ctc.JointSearch(self.decoder, use_ctc=self.asr_ctc_weight > 0) if searching else None
        )

    @property
    def asr_decoding(self) -> str:
        """How greedy ASR requests are decoded, in words (for reports)."""
        return asr_decoding(self.sampling, self.asr_ctc_weight > 0)

    def searches(self, p: _Prepared) -> bool:
        """Whether prepared request `p` is decoded by the ASR search (greedy ASR requests,
        when sampling.asr turns the search on) instead of the batched decode."""
        return (
            self.asr_search is not None and p.request.task == "asr"
            and p.params.temperature == 0 and p.params.repetition_penalty == 1.0
        )  # fmt: skip

    @staticmethod
    def source_slots(p: _Prepared) -> np.ndarray:
        """Prompt indices of an ASR / VC prompt's source frames: the positions the CTC head
        is trained on (`gpa_jax.training.asr_ctc`, the conditioning inputs)."""
        from gpa_jax.training.attention_guide import conditioning_keys

        prompt = np.asarray(p.prompt, np.int32)[None]
        keys = conditioning_keys(prompt, np.ones_like(prompt), np.zeros(prompt.shape, bool))
        return np.flatnonzero(np.asarray(keys[0]))

    def search(self, p: _Prepared) -> Result:
        """The Result of an ASR request decoded by the joint search (`searches(p)`)."""
        s = self.sampling
        P = _round_up(len(p.prompt), int(s.prompt_bucket))
        frame_index = self.source_slots(p) + (P - len(p.prompt))
        shape = joint_ctc.SearchShape(
            prompt_length=P,
            frames=_round_up(max(len(frame_index), 1), int(s.prompt_bucket)),
            max_steps=_round_up(p.max_new, int(s.steps_bucket)),
            # The beam's rows are a decode batch: they must divide over the mesh's batch
            # shards, so the beam is rounded up to a multiple of them.
            beam=_round_up(self.asr_beam, self.batch_multiple),
            candidates=max(int(s.asr.candidates), _round_up(self.asr_beam, self.batch_multiple)),
        )
        batch, _ = self.decode_batch([p], prompt_length=P, batch_size=self.batch_multiple)
        out = self.asr_search(batch, frame_index, shape, self.asr_ctc_weight)
        n = int(out["num_tokens"])
        result = self.result(p, out["tokens"][:n], bool(out["hit_eos"]))
        result.score = float(out["score"])
        return result

    @classmethod
    def from_checkpoint(
        cls,
        ckpt_dir: str,
        vocab: SpeechVocabulary,
        *,
        config: ml_collections.ConfigDict | None = None,
        mesh: jax.sharding.Mesh | None = None,
        step: int | None = None,
        **kwargs: Any,
    ) -> Sampler:
        """Restores only the params of `step` (default: latest) onto `mesh` (default: the
        config's mesh over this host's devices). `config` defaults to the one the trainer
        saved with the checkpoint."""
        from gpa_jax.training import checkpoint as ckpt

        config = config_from_checkpoint(ckpt_dir, step) if config is None else config
        mesh = sharding_lib.make_mesh(config.mesh) if mesh is None else mesh
        params = ckpt.restore_params_only(ckpt_dir, config, mesh, step)
        logging.info(
            "restored params of %s (step %s) onto mesh %s", ckpt_dir, step, dict(mesh.shape)
        )
        return cls(config, params, vocab, mesh=mesh, **kwargs)

    # --- requests -> prompts -----------------------------------------------------------

    def _codes(self, value: Any, what: str, layers: int) -> np.ndarray:
        """Validated codes [layers, frames] (the first `layers` rows of the given array)."""
        if value is None:
            raise RequestError(f"no {what} codes given")
        codes = np.asarray(value)
        if codes.ndim == 1:
            codes = codes[None]
        if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
            raise RequestError(
                f"{what} must be integer codes [n_q, frames] or [frames], got "
                f"{codes.dtype} {codes.shape}"
            )
        if codes.shape[1] == 0:
            raise RequestError(f"{what} codes are empty (0 frames)")
        if codes.shape[0] < layers:
            raise RequestError(f"{what} has {codes.shape[0]} RVQ layers, need {layers}")
        codes = codes[:layers]
        c = self.vocab.codebook_size
        if codes.min() < 0 or codes.max() >= c:
            raise RequestError(
                f"{what} codes span [{codes.min()}, {codes.max()}], outside [0, {c})"
            )
        return codes

    def prepare(self, request: Request, index: int = 0) -> _Prepared:
        """Prompt, budget, sampling parameters and id range of one request (or RequestError)."""
        task = request.task
        if task not in TASKS:
            raise RequestError(f"unknown task {task!r}; tasks: {', '.join(TASKS)}")
        if task in self.untrained:
            raise RequestError(
                f"this LM was not trained for {task} (its config's tasks.rates.{task} is 0 or "
                "absent): train one with that task in its mixture"
            )
        s = self.sampling
        text = source = None
        if task == "tts":
            normalized = normalize_transcript(request.text or "")
            if not normalized:
                raise RequestError(f"empty text (given {request.text!r})")
            spelled = tts_prompt_text([normalized], self.tts_text)[0]
            text = np.asarray(self.vocab.encode(spelled), np.int32)
            expected = s.tts.frames_per_char * len(normalized)
        if task in ("asr", "vc", "se"):
            src = self._codes(request.source, "source", 1)[0]
            source = self.vocab.audio_to_ids(src, 0)
            per_frame = {"asr": s.asr.tokens_per_frame, "vc": s.vc.frames_per_frame,
                         "se": s.se.frames_per_frame}[task]  # fmt: skip
            expected = per_frame * len(src)
        ref = None
        if task in ("tts", "vc"):
            if request.reference is None:
                raise RequestError(f"{task} needs a reference (codes of the target voice)")
            ref = self._codes(request.reference, "reference", self.ref_layers)
            ref = ref[:, : self.ref_max_frames]
        # Continuous and hybrid LMs both read the recorded rows of the prompt's audio.
        continuous = self.cfg.audio_input != "tokens"
        src_rows = ref_rows = None
        if continuous and source is not None:
            src_rows = self._features(request.source_features, "source", len(source))
        if continuous and ref is not None:
            ref_rows = self._features(request.reference_features, "reference", None)
            ref_rows = ref_rows[: ref.shape[1]]
            if len(ref_rows) != ref.shape[1]:
                raise RequestError(
                    f"reference_features has {len(ref_rows)} rows for {ref.shape[1]} code frames"
                )

        def build(ref_codes):
            reference = None if ref_codes is None else layout.reference_ids(ref_codes, self.vocab)
            pieces = layout.input_segments(
                task, self.vocab, text=text, reference=reference, source=source
            )
            prompt = layout.join([[layout.PROMPT_START], *pieces])
            audio = None
            if continuous:
                crop = None if ref_codes is None else ref_rows[: ref_codes.shape[1]]
                audio = _prompt_audio(task, self.vocab, text, crop, src_rows, self.ref_layers)
            return prompt, audio, len(prompt) + math.ceil(expected / s.length_margin) + 1

        prompt, audio, need = build(ref)
        if need > self.max_total_len and ref is not None:
            # The training length rule (gpa_jax.tasks.planning): shorten the reference by
            # just enough frames to fit, but not below ref_min_frames.
            shorter = ref.shape[1] - -(-(need - self.max_total_len) // ref.shape[0])
            if shorter >= min(self.ref_min_frames, ref.shape[1]) and shorter > 0:
                prompt, audio, need = build(ref[:, :shorter])
        if need > self.max_total_len:
            raise RequestError(
                f"over-long input: prompt of {len(prompt)} tokens + ~{math.ceil(expected / s.length_margin) + 1} "
                f"expected output tokens exceeds the limit of {self.max_total_len}"
            )
        room = self.max_total_len - len(prompt)
        if request.max_new_tokens is not None:
            if request.max_new_tokens < 1:
                raise RequestError(f"max_new_tokens={request.max_new_tokens} must be >= 1")
            budget = int(request.max_new_tokens)
        else:
            budget = math.ceil(s.length_margin * expected) + int(s.length_slack)
        params = request.params or SamplingParams.from_config(s[task])
        try:
            check_params(params, f"request {request.id or index} params")
        except ValueError as e:
            raise RequestError(str(e)) from None
        return _Prepared(
            index, request, prompt, min(budget, room), params,
            layout.output_range(task, self.vocab), audio,
        )  # fmt: skip

    def _features(self, value: Any, what: str, frames: int | None) -> np.ndarray:
        """Validated float32 log-mel rows [frames, F] of a continuous-input request."""
        if value is None:
            raise RequestError(
                f"model.audio_input={self.cfg.audio_input!r} needs {what}_features (token-aligned log-mel "
                f"rows, gpa_jax.audio.features.token_aligned_log_mel of the {what} audio)"
            )
        rows = np.asarray(value, np.float32)
        dim = self.cfg.audio_feature_dim
        if rows.ndim != 2 or rows.shape[1] != dim:
            raise RequestError(f"{what}_features must be [frames, {dim}], got {rows.shape}")
        if frames is not None and len(rows) != frames:
            raise RequestError(f"{what}_features has {len(rows)} rows for {frames} code frames")
        if not np.all(np.isfinite(rows)):
            raise RequestError(f"{what}_features has non-finite values")
        return rows

    # --- generation --------------------------------------------------------------------

    def _bucket_batch(self, n: int) -> int:
        b = 1 << max(0, (n - 1).bit_length())
        b = min(b, _round_up(int(self.sampling.max_batch), 1))
        return _round_up(max(b, n), self.batch_multiple)

    def _run_chunk(self, chunk: Sequence[_Prepared]) -> dict[str, np.ndarray]:
        return self.decoder(*self.decode_batch(chunk))

    def decode_batch(
        self,
        chunk: Sequence[_Prepared],
        *,
        prompt_length: int | None = None,
        batch_size: int | None = None,
    ) -> tuple[decode_lib.Batch, int]:
        """The bucketed decode batch of prepared requests and its step bound; the prompt
        length and row count default to this sampler's buckets."""
        s = self.sampling
        longest = max(len(p.prompt) for p in chunk)
        P = _round_up(longest, int(s.prompt_bucket)) if prompt_length is None else prompt_length
        steps = _round_up(max(p.max_new for p in chunk), int(s.steps_bucket))
        batch = decode_lib.make_batch(
            [p.prompt for p in chunk],
            max_new=[p.max_new for p in chunk],
            temperature=[p.params.temperature for p in chunk],
            top_k=[p.params.top_k for p in chunk],
            top_p=[p.params.top_p for p in chunk],
            repetition_penalty=[p.params.repetition_penalty for p in chunk],
            id_ranges=[p.id_range for p in chunk],
            seeds=[p.request.seed for p in chunk],
            prompt_length=P,
            batch_size=self._bucket_batch(len(chunk)) if batch_size is None else batch_size,
            audio=[p.audio for p in chunk] if chunk[0].audio is not None else None,
        )
        return batch, steps

    def _result(self, p: _Prepared, out: dict[str, np.ndarray], row: int) -> Result:
        n = int(out["num_tokens"][row])
        hit = bool(out["hit_eos"][row])
        return self.result(p, out["tokens"][row, : n - 1 if hit else n], hit)

    def result(self, p: _Prepared, tokens: Sequence[int], hit_eos: bool) -> Result:
        """The Result of a prepared request from its generated ids (<eos> excluded)."""
        r = p.request
        tokens = np.asarray(tokens, np.int32)
        hit = bool(hit_eos)
        result = Result(
            id=r.id,
            task=r.task,
            tokens=tokens,
            stop="eos" if hit else "max_length",
            prompt_length=len(p.prompt),
            max_new_tokens=p.max_new,
        )
        if layout.OUTPUT_KIND[r.task] == "text":
            result.text = self.vocab.decode(tokens.tolist())
        else:
            result.rvq1 = self.vocab.ids_to_audio(tokens, 0)
        return result

    def _complete(self, done: list[tuple[Result, Request]]) -> None:
        """Runs the acoustic stage on every TTS/VC/SE result with codes (batched when the
        stage has `complete_batch`), prompted with `Request.voice_prompt`; a failure is
        reported on the requests it hit."""
        items = [(res, req) for res, req in done if res.rvq1 is not None and len(res.rvq1)]
        if self.acoustic is None or not items:
            return
        rvq1 = [res.rvq1 for res, _ in items]
        prompts = [np.asarray(req.voice_prompt) for _, req in items]
        batched = getattr(self.acoustic, "complete_batch", None)
        try:
            outs = list(batched(rvq1, prompts)) if batched else None
        except Exception as e:  # noqa: BLE001  (reported per request, then retried alone)
            logging.warning("batched acoustic stage failed (%s); running items one by one", e)
            outs = None
        for i, (res, _) in enumerate(items):
            try:
                out = outs[i] if outs is not None else self.acoustic(rvq1[i], prompts[i])
                res.codes = np.asarray(out)
            except Exception as e:  # noqa: BLE001  (one request's failure, reported)
                res.error = f"acoustic stage failed: {type(e).__name__}: {e}"

    def generate(self, requests: Sequence[Request]) -> list[Result]:
        """One Result per request, in order (errors per request, see module docstring)."""
        results: list[Result | None] = [None] * len(requests)
        ready: list[_Prepared] = []
        for i, request in enumerate(requests):
            rid = request.id or str(i)
            try:
                ready.append(self.prepare(request, i))
            except RequestError as e:
                logging.warning("request %s (%s) rejected: %s", rid, request.task, e)
                results[i] = Result(id=request.id, task=str(request.task), error=str(e))
        for p in [p for p in ready if self.searches(p)]:
            results[p.index] = self.search(p)
        ready = [p for p in ready if results[p.index] is None]
        ready.sort(key=lambda p: len(p.prompt))
        size = int(self.sampling.max_batch)
        for start in range(0, len(ready), size):
            chunk = ready[start : start + size]
            out = self._run_chunk(chunk)
            for row, p in enumerate(chunk):
                results[p.index] = self._result(p, out, row)
        self._complete([(results[p.index], p.request) for p in ready])
        return results  # type: ignore[return-value]
