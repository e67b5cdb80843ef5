"""Training throughput of the LM, side by side with HF transformers Qwen3 in PyTorch.

    python -m launch.bench_train                                  # gpa_tiny, its dtype
    python -m launch.bench_train --config=configs/gpa_tiny.py:bf16 --peak_tflops=0.67
    python -m launch.bench_train --config=configs/gpa_0p3b.py --torch=false  # accelerator

JAX side: the trainer's own jitted, sharded train step (`trainer.make_step_fns`: AdamW
with clipping, z-loss, per-task sums) on the config's mesh, state built as the trainer
builds it. Torch side (the `[bench]` extra): `transformers.Qwen3ForCausalLM` of the same
shape (vocab, width, layers, heads / kv heads, head_dim, MLP, tied or not, QK-norm,
RoPE theta, norm eps) with sdpa attention, `torch.optim.AdamW` with the config's
hyper-parameters, global-norm clipping and the same weighted cross-entropy + z-loss.
Both sides train on the same packed batch (`data_iter.SyntheticLMBatches`, batch 0 of the
config's train.batch_size x train.seq_len) with the same attention semantics: packed
segments, causal, padding masked (torch gets position ids and a 4-D boolean mask;
--torch_attention=causal instead gives torch its plain causal kernel, ignoring the packing).

Precision: like with like. Torch runs in float32 and in bfloat16 autocast (fp32 master
weights, bf16 matmuls: the same split as the JAX side's dtype=bfloat16 with fp32 params);
the headline `ratio` compares JAX with the torch run of the same compute precision as
`config.model.dtype`, and the other torch figure is reported too.

Timing: `--warmup` untimed steps per side (compiles, allocator warm-up), then `--rounds`
rounds in which every side runs `--steps` timed steps in turn (the order rotates each
round), so load from other processes on a shared machine hits all sides alike. A side's
tokens/s is tokens per step over its median step time; the spread over all its steps
(best, worst) is printed too. `--compare` adds JAX sides with other overrides (e.g. the
reference attention) to the same interleaved timing. MFU uses MaxText's FLOPs (gpa_jax.models.flops) over the
peak from --peak_tflops, else the known table for the accelerator kind (CPUs need the flag).

The last stdout line is one JSON object (tokens_per_s, torch_tokens_per_s, ratio, mfu, ...).
"""

from __future__ import annotations

import copy
import json
import math
import statistics
import time
from typing import Any

from absl import app, flags, logging

from gpa_jax import config_utils
from launch import common
from launch.bench_steps import JaxSide

config_utils.define_config_flag("configs/gpa_tiny.py")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per side in each round.")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Rounds; each runs --steps steps of every side.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps per side before timing (>= 1).")
_TORCH = flags.DEFINE_enum(
    "torch", "auto", ["auto", "true", "false"],
    "Run the PyTorch side: auto = if torch and transformers import; true = required.",
)  # fmt: skip
_TORCH_DTYPES = flags.DEFINE_list(
    "torch_dtypes", ["float32", "bfloat16"],
    "Torch precisions to run: float32 and/or bfloat16 (autocast).",
)  # fmt: skip
_TORCH_ATTENTION = flags.DEFINE_enum(
    "torch_attention", "packed", ["packed", "causal"],
    "packed: the JAX side's mask (segments + causal + padding); causal: sdpa is_causal only.",
)  # fmt: skip
_COMPARE = flags.DEFINE_multi_string(
    "compare", [],
    "Extra JAX side: comma-separated config overrides on top of --config, e.g. "
    "--compare=model.attention_impl=xla (repeatable); timed interleaved with the rest.",
)  # fmt: skip
_PEAK_TFLOPS = flags.DEFINE_float(
    "peak_tflops", None,
    "Peak TFLOP/s of all devices used, for MFU (required for CPUs; default: known table).",
)  # fmt: skip

_TORCH_DTYPE_NAMES = ("float32", "bfloat16")


def _median_rate(times: list[float], tokens: int) -> dict[str, float]:
    return {
        "tokens_per_s": tokens / statistics.median(times),
        "best_tokens_per_s": tokens / min(times),
        "worst_tokens_per_s": tokens / max(times),
        "median_step_s": statistics.median(times),
    }


class TorchSide:
    """HF Qwen3ForCausalLM of the config's shape, AdamW + clipping, the same batch."""

    def __init__(self, config, batch: dict[str, Any], dtype: str, attention: str):
        import torch
        import transformers

        from gpa_jax.models import LMConfig
        from gpa_jax.serving import qwen3

        m, opt = config.model, config.optimizer
        self.name = f"torch[{dtype}]"
        self._torch = torch
        if not m.qk_norm:
            raise ValueError("the torch baseline is Qwen3, which always has QK-norm; this config "
                             "has qk_norm=False")  # fmt: skip
        if m.prefix_bidirectional:
            logging.warning("torch baseline: prefix_bidirectional ignored (causal Qwen3)")
        # The export's config.json (one mapping: gpa_jax.serving.qwen3), positions for the
        # benchmark's sequence length, sdpa attention.
        hf = qwen3.hf_config(LMConfig.from_config(m))
        hf["max_position_embeddings"] = max(m.max_len, config.train.seq_len)
        hf_config = transformers.Qwen3Config(**hf, attn_implementation="sdpa")
        torch.manual_seed(int(config.seed))
        self.model = transformers.Qwen3ForCausalLM(hf_config).train()
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=float(opt.learning_rate),
            betas=(float(opt.b1), float(opt.b2)),
            eps=float(opt.eps),
            weight_decay=float(opt.weight_decay),
        )
        self.clip_norm = float(opt.clip_norm)
        self.z_loss = float(opt.z_loss)
        self.autocast = dtype == "bfloat16"
        self.vocab = m.vocab_size
        self.ids = torch.from_numpy(batch["decoder_input_tokens"]).long()
        self.targets = torch.from_numpy(batch["decoder_target_tokens"]).long().reshape(-1)
        self.weights = torch.from_numpy(batch["decoder_loss_weights"]).float().reshape(-1)
        self.kwargs = {}
        if attention == "packed":
            seg = torch.from_numpy(batch["decoder_segment_ids"])
            length = seg.shape[1]
            causal = torch.tril(torch.ones(length, length, dtype=torch.bool))
            mask = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] != 0) & causal
            self.kwargs = {
                "attention_mask": mask[:, None],
                "position_ids": torch.from_numpy(batch["decoder_positions"]).long(),
            }

    def step(self) -> float:
        torch = self._torch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            logits = self.model(input_ids=self.ids, **self.kwargs).logits
        logits = logits.float().reshape(-1, self.vocab)
        lse = torch.logsumexp(logits, dim=-1)
        nll = lse - logits.gather(1, self.targets[:, None])[:, 0]
        per_token = nll + self.z_loss * lse.square()
        loss = (per_token * self.weights).sum() / self.weights.sum().clamp(min=1.0)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        return float(loss.detach())


def _torch_available() -> str | None:
    """None if torch + transformers import, else the reason."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        return f"{e} (install the [bench] extra: pip install -e '.[bench]')"
    return None


def run(config, *, steps: int, rounds: int, warmup: int, torch_mode: str,
        torch_dtypes: list[str], torch_attention: str,
        peak_tflops: float | None, compare: list[str] = ()) -> dict[str, Any]:  # fmt: skip
    """Builds the sides, warms them up, times them interleaved; returns the JSON summary."""
    from gpa_jax.models import LMConfig
    from gpa_jax.models import flops as flops_lib
    from gpa_jax.training.data_iter import SyntheticLMBatches

    if steps < 1 or rounds < 1 or warmup < 1:
        raise ValueError(f"--steps={steps}, --rounds={rounds}, --warmup={warmup} must be >= 1")
    bad = sorted(set(torch_dtypes) - set(_TORCH_DTYPE_NAMES))
    if bad:
        raise ValueError(f"--torch_dtypes {bad}; expected some of {_TORCH_DTYPE_NAMES}")
    cfg = LMConfig.from_config(config.model)
    batch_size, seq_len = int(config.train.batch_size), int(config.train.seq_len)
    tokens = batch_size * seq_len
    batch = SyntheticLMBatches(config, split="train").batch_at(0)

    sides: list[Any] = []
    jax_side = JaxSide(config, batch)
    sides.append(jax_side)
    for spec in compare:
        variant = copy.deepcopy(config)
        config_utils.apply_overrides(variant, [o for o in spec.split(",") if o], "--compare")
        sides.append(JaxSide(variant, batch, label=spec))
    torch_missing = None
    if torch_mode != "false":
        torch_missing = _torch_available()
        if torch_missing is not None and torch_mode == "true":
            raise RuntimeError(f"--torch=true but torch is unavailable: {torch_missing}")
        if torch_missing is not None:
            print(f"torch side skipped: {torch_missing}; reporting JAX only")
        else:
            for dtype in torch_dtypes:
                sides.append(TorchSide(config, batch, dtype, torch_attention))

    compile_s = {}
    for side in sides:
        t0 = time.perf_counter()
        for _ in range(warmup):
            loss = side.step()
        compile_s[side.name] = time.perf_counter() - t0
        if not math.isfinite(loss):
            raise FloatingPointError(f"{side.name}: non-finite loss {loss} during warm-up")
        print(
            f"{side.name}: warm-up {warmup} steps in {compile_s[side.name]:.1f} s, loss {loss:.4f}"
        )

    times: dict[str, list[float]] = {side.name: [] for side in sides}
    for r in range(rounds):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]
        for side in order:
            for _ in range(steps):
                t0 = time.perf_counter()
                side.step()  # returns a host float: the step has finished
                times[side.name].append(time.perf_counter() - t0)

    rates = {name: _median_rate(ts, tokens) for name, ts in times.items()}
    flops = flops_lib.training_flops_per_token(cfg, seq_len)
    peak = peak_tflops
    if peak is None and jax_side.platform != "cpu":
        per_chip = flops_lib.peak_tflops_for(jax_side.device_kind)
        peak = None if per_chip is None else per_chip * jax_side.devices
    jax_rate = rates[jax_side.name]["tokens_per_s"]
    mfu = None if peak is None else flops_lib.mfu(flops.total, jax_rate, peak * 1e12)

    for spec in compare:
        r = rates[f"jax[{spec}]"]
        r["ratio_to_main"] = r["tokens_per_s"] / jax_rate
    same = f"torch[{'bfloat16' if cfg.dtype == 'bfloat16' else 'float32'}]"
    torch_rate = rates.get(same, {}).get("tokens_per_s")
    summary: dict[str, Any] = {
        "tokens_per_s": jax_rate,
        "torch_tokens_per_s": torch_rate,
        "ratio": None if torch_rate is None else jax_rate / torch_rate,
        "mfu": mfu,
        "config": config_utils.flags.FLAGS["config"].value if _is_cli() else None,
        "dtype": cfg.dtype,
        "torch_dtype": same[6:-1] if torch_rate is not None else None,
        "torch_attention": torch_attention if len(sides) > 1 else None,
        "torch_missing": torch_missing,
        "batch": [batch_size, seq_len],
        "steps_timed": steps * rounds,
        "flops_per_token": flops.total,
        "peak_tflops": peak,
        "device": f"{jax_side.devices}x {jax_side.device_kind}",
        "sides": {name: {**r, "warmup_s": compile_s[name]} for name, r in rates.items()},
    }
    for name in ("torch[float32]", "torch[bfloat16]"):
        if name in rates:
            key = name[6:-1]
            summary[f"torch_{key}_tokens_per_s"] = rates[name]["tokens_per_s"]
            summary[f"ratio_vs_torch_{key}"] = jax_rate / rates[name]["tokens_per_s"]
    return summary


def _is_cli() -> bool:
    return config_utils.flags.FLAGS.is_parsed()


def _print_table(summary: dict[str, Any]) -> None:
    print(f"batch {summary['batch'][0]} x {summary['batch'][1]} tokens, "
          f"{summary['steps_timed']} timed steps per side, device {summary['device']}")  # fmt: skip
    for name, r in summary["sides"].items():
        print(f"  {name:16s} {r['tokens_per_s']:9.0f} tokens/s (median step "
              f"{r['median_step_s']:.3f} s; best {r['best_tokens_per_s']:.0f}, "
              f"worst {r['worst_tokens_per_s']:.0f})"
              + (f"; {r['ratio_to_main']:.2f}x the first JAX side" if "ratio_to_main" in r else ""))  # fmt: skip
    if summary["ratio"] is not None:
        print(f"ratio JAX / torch at the same precision ({summary['dtype']}): "
              f"{summary['ratio']:.2f}x")  # fmt: skip
    flops = summary["flops_per_token"]
    if summary["mfu"] is None:
        print(f"MFU: pass --peak_tflops (training FLOPs/token {flops:.3g})")
    else:
        print(f"MFU {100 * summary['mfu']:.1f}% ({flops:.3g} FLOPs/token, peak "
              f"{summary['peak_tflops']:g} TFLOP/s)")  # fmt: skip


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = config_utils.config_from_flags()
    summary = run(
        config,
        steps=_STEPS.value,
        rounds=_ROUNDS.value,
        warmup=_WARMUP.value,
        torch_mode=_TORCH.value,
        torch_dtypes=_TORCH_DTYPES.value,
        torch_attention=_TORCH_ATTENTION.value,
        peak_tflops=_PEAK_TFLOPS.value,
        compare=_COMPARE.value,
    )
    _print_table(summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    common.run(main)
