"""Decode throughput of the sampler, side by side with HF transformers `generate` (PyTorch).

    python -m launch.bench_sample --config.model.attention_impl=auto   # gpa_tiny, float32
    python -m launch.bench_sample --config=configs/gpa_tiny.py:bf16
    python -m launch.bench_sample --batch_sizes=1,8,32 --new_tokens=200 --torch=false

Workload (issue 6): per batch size, prompts of --prompt_len random tokens, --new_tokens
greedy new tokens per row, the same for both sides. Both sides may emit any id but
<pad>/<eos> (JAX: the sampler's id-range mask [2, vocab); torch: `suppress_tokens=[0, 1]`),
so every row runs the full length on both.

JAX side: `gpa_jax.sampling.decode.Decoder`, the sampler's compiled program (prefill of
left-padded prompts + a lax.while_loop decode with the cache updated in place and the
token choice fused), bucketed as the sampler buckets (sampling_config's prompt_bucket and
steps_bucket), so the timed calls reuse one compile per batch size. Torch side (the
`[bench]` extra): `transformers.Qwen3ForCausalLM` of the same shape (vocab, width, layers,
heads / kv heads, head_dim, MLP, tied embeddings, QK-norm, RoPE theta, norm eps), sdpa
attention, `generate(do_sample=False)` with its KV cache, under torch.inference_mode.
The JAX model gets the torch model's weights, so both compute the same function; the
fraction of greedy tokens on which they agree is reported (`agreement`) as the check
that the architectures match (float rounding may flip a near-tie and then the rest of
that row).

Attention: the decode runs `attention_core` with the config's `attention_impl`; on a CPU
'auto' (= 'cpu', grouped heads) is the fast one: 'xla' (jax.nn.dot_product_attention)
made a batch-32 decode step's attention ~9x slower in a micro-benchmark here.

Precision: like with like. Torch runs in float32 (and, with --torch_dtypes, bfloat16);
the headline ratios compare JAX with the torch run of the precision of
`config.model.dtype`.

Torch threads: OpenMP spin-waiting makes multi-threaded torch collapse on an
oversubscribed machine (measured: 10x slower at 2 threads than at 1 with other jobs
running), so by default (--torch_threads=0) each batch size first probes torch's default
thread count and 1 thread on a short generate and times the faster (reported as
`b<B>_torch_threads`): the ratio is against torch's best setting, not its worst.

Timing: one untimed call per side and batch size (compile / warm-up), then --rounds
rounds that time every side in turn (order alternating), so load from other processes
on a shared machine hits both alike. tokens/s = batch * new_tokens / wall time of a
whole call (prefill + decode + host transfer), median over rounds (best also printed).

TTS (with --workdir=W, the chain `make demo` trains there: codec, LM, acoustic stage):
per concurrency N (--tts_concurrency), N TTS requests at once (texts of --tts_split, each
with another utterance's codes as the reference, the task's sampling defaults, fixed
seeds), timed after an untimed pass that compiles every shape:
    one-shot   Sampler.generate + acoustic stage + codec decode of the whole batch;
               RTF = wall time / seconds of audio, per request, averaged
    streaming  gpa_jax.sampling.streaming.stream_audio (first chunk --chunk_frames,
               then growing by --chunk_growth up to --max_chunk_frames): TTFC = time to
               a request's first audio chunk, RTF = time to its last chunk / its seconds
               of audio, averaged over requests; next to it the RTF with every chunk of
               --chunk_frames (growth 1), the baseline the growth is measured against
"tts_rtf" is the one-shot RTF at the first concurrency, "tts_ttfc_s" / "tts_stream_rtf"
the streaming ones; the whole table is printed and under "tts". On this CPU the table
stops at small N; GPA's published concurrency table (1...160 requests) needs a GPU.

The last stdout line is one JSON object: {"b1_ratio", "b32_ratio", per side tokens/s,
"tts_rtf", "tts_ttfc_s", ...}.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

import numpy as np
from absl import app, flags, logging

from gpa_jax import config_utils
from launch import common

config_utils.define_config_flag("configs/gpa_tiny.py")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "32"], "Batch sizes to time.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 64, "Prompt tokens per row.")
_NEW_TOKENS = flags.DEFINE_integer("new_tokens", 200, "Greedy new tokens per row.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Timed calls per side and batch size.")
_TORCH = flags.DEFINE_enum(
    "torch", "auto", ["auto", "true", "false"],
    "Run the PyTorch side: auto = if torch and transformers import; true = required.",
)  # fmt: skip
_TORCH_DTYPES = flags.DEFINE_list(
    "torch_dtypes", [], "Torch precisions to run (default: the config's compute dtype)."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the weights and prompts.")
# --workdir (launch.common's flag; here only when given): a chain trained by make demo,
# for the TTS RTF / TTFC table.
_TTS_CONCURRENCY = flags.DEFINE_list("tts_concurrency", ["1", "4", "16"], "Concurrent TTS requests.")
_TTS_SPLIT = flags.DEFINE_string("tts_split", "test", "Token split the TTS texts come from.")
_TORCH_THREADS = flags.DEFINE_integer(
    "torch_threads", 0, "Torch intra-op threads; 0 = the faster of its default and 1 (probed)."
)


def _torch_available() -> str | None:
    """None if torch + transformers import, else why not."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e} (install the [bench] extra)"
    return None


class TorchSide:
    """HF Qwen3ForCausalLM of the config's shape; `generate` with its KV cache."""

    def __init__(self, m: Any, dtype: str, seed: int):
        import torch
        import transformers

        from gpa_jax.models import LMConfig
        from gpa_jax.serving import qwen3

        self.torch = torch
        # The export's config.json (one mapping: gpa_jax.serving.qwen3), sdpa attention.
        hf_config = transformers.Qwen3Config(
            **qwen3.hf_config(LMConfig.from_config(m)), attn_implementation="sdpa"
        )
        torch.manual_seed(seed)
        self.model = transformers.Qwen3ForCausalLM(hf_config).eval()
        self.dtype = dtype
        if dtype == "bfloat16":
            self.model = self.model.to(torch.bfloat16)

    def choose_threads(self, prompts: np.ndarray, threads: int, probe_tokens: int = 16) -> int:
        """Sets torch's thread count: `threads`, or (0) the faster of default and 1."""
        torch = self.torch
        if threads > 0:
            torch.set_num_threads(threads)
            return threads
        if not hasattr(self, "default_threads"):
            self.default_threads = torch.get_num_threads()
        default = self.default_threads
        best, best_t = default, None
        for n in sorted({default, 1}, reverse=True):
            torch.set_num_threads(n)
            self.generate(prompts, probe_tokens)  # warm-up at this setting
            t = time.perf_counter()
            self.generate(prompts, probe_tokens)
            elapsed = time.perf_counter() - t
            if best_t is None or elapsed < best_t:
                best, best_t = n, elapsed
        torch.set_num_threads(best)
        return best

    def weights(self) -> dict[str, np.ndarray]:
        return {k: v.detach().float().numpy() for k, v in self.model.state_dict().items()}

    def generate(self, prompts: np.ndarray, new_tokens: int) -> np.ndarray:
        torch = self.torch
        ids = torch.from_numpy(prompts).long()
        with torch.inference_mode():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                suppress_tokens=[0, 1],
                use_cache=True,
            )
        return out[:, prompts.shape[1] :].numpy()


class JaxSide:
    """The sampler's Decoder over left-padded prompts, bucketed like the Sampler."""

    def __init__(self, config: Any, weights: dict[str, np.ndarray] | None, seed: int):
        import jax
        from flax import nnx

        from gpa_jax.models import LMConfig, make_lm
        from gpa_jax.sampling import decode, sampling_config
        from gpa_jax.serving import qwen3

        self.decode = decode
        self.cfg = LMConfig.from_config(config.model)
        # Params from numpy into an abstract model (fast: no RNG compile), then torch's.
        model = nnx.eval_shape(lambda: make_lm(config, rngs=nnx.Rngs(0)))
        rng = np.random.default_rng(seed)
        for _, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            var.set_value(np.asarray(0.02 * rng.standard_normal(var.shape), var.dtype))
        if weights is not None:
            qwen3.load_hf_state_dict(model, weights)
        self.decoder = decode.Decoder(model)
        s = sampling_config()
        self.prompt_bucket, self.steps_bucket = int(s.prompt_bucket), int(s.steps_bucket)
        self.jax = jax

    def batch(self, prompts: np.ndarray, new_tokens: int):
        n, length = prompts.shape
        bucket = -(-length // self.prompt_bucket) * self.prompt_bucket
        return self.decode.make_batch(
            list(prompts),
            max_new=[new_tokens] * n,
            temperature=[0.0] * n,
            top_k=[0] * n,
            top_p=[1.0] * n,
            repetition_penalty=[1.0] * n,
            id_ranges=[(2, self.cfg.vocab_size)] * n,
            allow_eos=[False] * n,
            seeds=list(range(n)),
            prompt_length=bucket,
        )

    def generate(self, batch, new_tokens: int) -> np.ndarray:
        steps = -(-new_tokens // self.steps_bucket) * self.steps_bucket
        out = self.decoder(batch, steps)
        return out["tokens"][:, :new_tokens]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def run(
    config,
    *,
    batch_sizes,
    prompt_len,
    new_tokens,
    rounds,
    torch_mode,
    torch_dtypes,
    seed,
    torch_threads=0,
):
    m = config.model
    why_not = _torch_available() if torch_mode != "false" else "--torch=false"
    if why_not and torch_mode == "true":
        raise RuntimeError(f"--torch=true but torch is unavailable: {why_not}")
    torch_dtypes = list(torch_dtypes) or [
        m.dtype if m.dtype in ("float32", "bfloat16") else "float32"
    ]
    torch_sides = {}
    if not why_not:
        import torch

        logging.info("torch %s, %d threads", torch.__version__, torch.get_num_threads())
        torch_sides = {dt: TorchSide(m, dt, seed) for dt in torch_dtypes}
    else:
        logging.warning("no torch side: %s; reporting JAX only", why_not)
    weights = next(iter(torch_sides.values())).weights() if torch_sides else None
    jax_side = JaxSide(config, weights, seed)
    rng = np.random.default_rng(seed)
    results: dict[str, Any] = {}
    for b in batch_sizes:
        prompts = rng.integers(2, m.vocab_size, (b, prompt_len)).astype(np.int32)
        batch = jax_side.batch(prompts, new_tokens)
        t0 = time.perf_counter()
        jax_tokens = jax_side.generate(batch, new_tokens)
        compile_s = time.perf_counter() - t0
        sides = {"jax": lambda batch=batch: jax_side.generate(batch, new_tokens)}
        outputs = {"jax": jax_tokens}
        threads = {}
        for dt, side in torch_sides.items():
            threads[dt] = side.choose_threads(prompts, torch_threads)
            outputs[f"torch_{dt}"] = side.generate(prompts, new_tokens)  # warm-up

            def call(side=side, n=threads[dt], prompts=prompts):
                side.torch.set_num_threads(n)
                return side.generate(prompts, new_tokens)

            sides[f"torch_{dt}"] = call
        times: dict[str, list[float]] = {name: [] for name in sides}
        for r in range(rounds):
            order = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in order:
                t = time.perf_counter()
                sides[name]()
                times[name].append(time.perf_counter() - t)
        entry: dict[str, Any] = {"first_call_s": compile_s}
        for name, ts in times.items():
            entry[f"{name}_tok_s"] = b * new_tokens / statistics.median(ts)
            entry[f"{name}_best_tok_s"] = b * new_tokens / min(ts)
        for name in torch_sides:
            entry[f"agreement_{name}"] = _agreement(jax_tokens, outputs[f"torch_{name}"])
            entry[f"torch_threads_{name}"] = threads[name]
        results[b] = entry
        logging.info("batch %d: %s", b, {k: round(v, 3) for k, v in entry.items()})
    headline = f"torch_{m.dtype}"
    summary: dict[str, Any] = {
        "config_dtype": m.dtype,
        "attention_impl": m.attention_impl,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "torch": None if why_not else {"dtypes": torch_dtypes},
        "torch_missing": why_not,
        "cpu_count": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
    }
    for b, entry in results.items():
        summary[f"b{b}_jax_tok_s"] = round(entry["jax_tok_s"], 1)
        for dt in torch_sides:
            summary[f"b{b}_torch_{dt}_tok_s"] = round(entry[f"torch_{dt}_tok_s"], 1)
            summary[f"b{b}_agreement_{dt}"] = round(entry[f"agreement_{dt}"], 4)
            summary[f"b{b}_torch_threads_{dt}"] = entry[f"torch_threads_{dt}"]
        ratio = None
        if f"{headline}_tok_s" in entry:
            ratio = round(entry["jax_tok_s"] / entry[f"{headline}_tok_s"], 3)
        summary[f"b{b}_ratio"] = ratio
        summary[f"b{b}_first_call_s"] = round(entry["first_call_s"], 2)
    return summary, results


def tts_requests(bank, n: int, seed: int):
    """n TTS requests: texts of `bank` in order, each with the next utterance's codes as the
    reference (the sampler crops it to its reference length)."""
    from gpa_jax.sampling import Request

    u_n = bank.num_utterances
    return [Request.tts(bank.texts[i % u_n], bank.utterance_codes((i + 1) % u_n), id=bank.ids[i % u_n],
                        seed=seed + i, reference_features=bank.utterance_features((i + 1) % u_n))
            for i in range(n)]  # fmt: skip


def tts_benchmark(workdir: str, concurrency, *, split: str, seed: int, **stream_options):
    """One-shot and streaming TTS timings per concurrency (module docstring)."""
    from gpa_jax.evaluation import harness
    from gpa_jax.sampling import streaming
    from gpa_jax.tasks import planning
    from gpa_jax.tasks.config import resolve_paths

    models = harness.load_models(workdir, speaker_encoder="")
    codec, sampler = models.codec, models.sampler
    rate = float(codec.sample_rate)
    synth = streaming.synthesizer(codec, models.acoustic)
    token_dir = resolve_paths(sampler.config.tasks, workdir)[0]
    bank = planning.load_bank(token_dir, split, sampler.vocab, layers=codec.n_q,
                              features=harness.reads_features(sampler), tts_text=sampler.tts_text)  # fmt: skip
    sampler.sampling.max_batch = max(int(sampler.sampling.max_batch), max(concurrency))
    rows = []
    for n in concurrency:
        requests = tts_requests(bank, n, seed)

        def one_shot(requests=requests):
            t = time.perf_counter()
            results = sampler.generate(requests)
            ok = [r for r in results if r.ok]
            wavs = synth([r.rvq1 for r in ok], [q.reference for q, r in zip(requests, results, strict=True)
                                                 if r.ok])  # fmt: skip
            return time.perf_counter() - t, [len(w) / rate for w in wavs]

        def stream(requests=requests, options=stream_options):
            first, last, samples = {}, {}, {}
            for c in streaming.stream_audio(sampler, codec, requests, synthesize=synth,
                                            **options):  # fmt: skip
                if c.error:
                    continue
                first.setdefault(c.index, c.elapsed_s)
                last[c.index] = c.elapsed_s
                samples[c.index] = samples.get(c.index, 0) + len(c.wav)
            done = [i for i in last if samples[i]]
            return ([first[i] for i in done], [last[i] / (samples[i] / rate) for i in done],
                    [samples[i] / rate for i in done])  # fmt: skip

        fixed = {**stream_options, "chunk_growth": 1.0}  # the baseline: every chunk the first's size
        one_shot(), stream(), stream(options=fixed)  # compiles every shape these requests need
        wall, seconds = one_shot()
        ttfc, stream_rtf, stream_seconds = stream()
        _, fixed_rtf, _ = stream(options=fixed)
        row = {
            "concurrency": n,
            "ok": len(seconds),
            "audio_s_mean": round(float(np.mean(seconds)), 3) if seconds else None,
            "rtf": round(float(np.mean([wall / d for d in seconds if d > 0])), 4) if seconds else None,
            "ttfc_s": round(float(np.mean(ttfc)), 4) if ttfc else None,
            "ttfc_s_max": round(float(np.max(ttfc)), 4) if ttfc else None,
            "stream_rtf": round(float(np.mean(stream_rtf)), 4) if stream_rtf else None,
            "stream_rtf_fixed_chunks": round(float(np.mean(fixed_rtf)), 4) if fixed_rtf else None,
            "stream_audio_s_mean": round(float(np.mean(stream_seconds)), 3) if stream_seconds else None,
        }
        rows.append(row)
        logging.info("tts concurrency %d: %s", n, row)
    return rows


def _print_tts_table(rows) -> None:
    print(f"{'concurrent':>10} {'ok':>4} {'audio s':>8} {'RTF':>8} {'TTFC s':>8} {'max TTFC':>9} "
          f"{'stream RTF':>11} {'fixed-chunk RTF':>16}")  # fmt: skip
    for r in rows:
        cells = [r[k] if r[k] is not None else float("nan")
                 for k in ("audio_s_mean", "rtf", "ttfc_s", "ttfc_s_max", "stream_rtf",
                           "stream_rtf_fixed_chunks")]  # fmt: skip
        print(f"{r['concurrency']:>10} {r['ok']:>4} {cells[0]:>8.2f} {cells[1]:>8.4f} "
              f"{cells[2]:>8.3f} {cells[3]:>9.3f} {cells[4]:>11.4f} {cells[5]:>16.4f}")  # fmt: skip


def _print_table(results: dict[int, dict[str, float]]) -> None:
    names = sorted(
        {k[: -len("_tok_s")] for e in results.values() for k in e if k.endswith("_tok_s")}
        - {k[: -len("_tok_s")] for e in results.values() for k in e if "_best_" in k}
    )
    print(f"{'batch':>5}  " + "  ".join(f"{n + ' tok/s':>22}" for n in names))
    for b, e in results.items():
        print(f"{b:>5}  " + "  ".join(f"{e[n + '_tok_s']:>22.1f}" for n in names))


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    summary, results = run(
        config,
        batch_sizes=[int(b) for b in _BATCH_SIZES.value],
        prompt_len=_PROMPT_LEN.value,
        new_tokens=_NEW_TOKENS.value,
        rounds=_ROUNDS.value,
        torch_mode=_TORCH.value,
        torch_dtypes=_TORCH_DTYPES.value,
        seed=_SEED.value,
        torch_threads=_TORCH_THREADS.value,
    )
    _print_table(results)
    summary.update(tts_rtf=None, tts_ttfc_s=None, tts_stream_rtf=None, tts=None)
    if flags.FLAGS["workdir"].present:
        rows = tts_benchmark(
            common.existing_workdir(), [int(n) for n in _TTS_CONCURRENCY.value], split=_TTS_SPLIT.value,
            seed=_SEED.value, **common.stream_options(),
        )  # fmt: skip
        _print_tts_table(rows)
        summary.update(tts=rows, tts_rtf=rows[0]["rtf"], tts_ttfc_s=rows[0]["ttfc_s"],
                       tts_stream_rtf=rows[0]["stream_rtf"])  # fmt: skip
    else:
        summary["tts_note"] = "give --workdir=W (a chain trained by make demo) for TTS RTF / TTFC"
    print(json.dumps(summary))


if __name__ == "__main__":
    common.run(main)
