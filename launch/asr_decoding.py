"""ASR error rates of a trained LM under each decoding setting, on the same rows.

    python -m launch.asr_decoding --workdir=W --split=validation --rows=40 \\
        --settings=0:1,0:4,0.3:4,0.5:4,0.7:4,0.5:8 --json_out=W/eval/asr_decoding.json

Each setting is ctc_weight:beam (`gpa_jax.sampling.config`, sampling.asr): 0:1 is greedy
decoding, 0:B an attention-only beam search, w:B the joint CTC/attention search
(`gpa_jax.sampling.joint_ctc`). For an LM trained with the CTC head, the head's own
greedy transcripts of the rows are a row of the table too. Every setting decodes the
first `rows` planned ASR rows of `split` with the newest checkpoint (the params restored
once) and reports WER / CER (`gpa_jax.evaluation.asr_metrics`) and its seconds per row
on this machine, its own compiles included (each setting compiles its own programs).
Choose a setting on validation, report it on test: the table that chose
configs/gpa_tiny.py's sampling.asr.
"""

from __future__ import annotations

import time

from absl import app, flags

from gpa_jax import paths
from gpa_jax.errors import UserError
from launch import common

_SPLIT = flags.DEFINE_string("split", "validation", "Token split whose planned ASR rows are decoded.")
_ROWS = flags.DEFINE_integer("rows", 40, "Rows decoded per setting.")
_SETTINGS = flags.DEFINE_list("settings", ["0:1", "0:4", "0.3:4", "0.5:4", "0.7:4", "0.5:8"],
                              "Decoding settings, each ctc_weight:beam.")  # fmt: skip
_STEP = flags.DEFINE_integer("step", None, "LM checkpoint step (default: the newest).")
_JSON_OUT = flags.DEFINE_string("json_out", None, "Also write the table as JSON here.")


def parse_setting(text: str) -> tuple[float, int]:
    """'0.5:4' -> (0.5, 4); a clear error for anything else."""
    try:
        weight, beam = text.split(":")
        return float(weight), int(beam)
    except ValueError:
        raise app.UsageError(f"--settings entry {text!r}: expected ctc_weight:beam, e.g. 0.5:4") from None


def decoding_table(workdir: str, *, split: str, rows: int, settings, step: int | None = None):
    """[{decoding, ctc_weight, beam, wer, cer, rows, seconds_per_row}] per setting, then the
    CTC head's greedy row when the LM has one."""
    from gpa_jax.evaluation import conditioning
    from gpa_jax.sampling import Sampler, config_from_checkpoint, sampling_config
    from gpa_jax.tasks import planning
    from gpa_jax.tasks.config import resolve_paths
    from gpa_jax.training import checkpoint as ckpt_lib
    from gpa_jax.training.data_iter import task_vocabulary

    lm_dir = ckpt_lib.checkpoint_dir(workdir)
    config = config_from_checkpoint(lm_dir, step)
    vocab = task_vocabulary(config, workdir)
    base = Sampler.from_checkpoint(lm_dir, vocab, config=config, step=step)
    settings_ = planning.PlanSettings.from_config(config.tasks, int(config.train.seq_len))
    bank = planning.load_bank(resolve_paths(config.tasks, workdir)[0], split, vocab,
                              layers=settings_.ref_layers, features=base.cfg.audio_input != "tokens",
                              tts_text=settings_.tts_text)  # fmt: skip
    plan = planning.plan_task("asr", bank, settings_, 0, split)[0][:rows]
    if not len(plan):
        raise UserError(f"no ASR row of split {split!r} fits the LM (token shards {workdir})")
    table = []
    for weight, beam in settings:
        asr = dict(ctc_weight=weight, beam=beam, candidates=max(8, beam))
        sampler = Sampler(config, base.model, vocab, mesh=base.mesh, sampling=sampling_config(asr=asr))
        start = time.perf_counter()
        rates = conditioning.asr_rows_error_rates(sampler, bank, plan)
        seconds = (time.perf_counter() - start) / len(plan)
        table.append({**rates, "ctc_weight": weight, "beam": beam, "seconds_per_row": seconds})
        print(f"{rates['decoding']}: WER {rates['wer']:.3f} CER {rates['cer']:.3f} "
              f"({seconds:.2f} s/row)", flush=True)  # fmt: skip
    if getattr(base.model, "ctc_proj", None) is not None:
        rates = conditioning.ctc_error_rates(base, bank, plan)
        table.append({**rates, "decoding": "CTC head alone, greedy"})
    return table


def format_table(table, split: str) -> str:
    lines = [f"ASR decoding on {table[0]['rows']} {split} rows", "",
             "| decoding | WER | CER | s/row |", "|---|---|---|---|"]  # fmt: skip
    for row in table:
        seconds = f"{row['seconds_per_row']:.2f}" if "seconds_per_row" in row else "-"
        lines.append(f"| {row['decoding']} | {row['wer']:.3f} | {row['cer']:.3f} | {seconds} |")
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    settings = [parse_setting(s) for s in _SETTINGS.value]
    workdir = common.existing_workdir()
    if _JSON_OUT.value:  # its folder is made (or refused) before minutes of decoding
        common.output_file(_JSON_OUT.value)
    table = decoding_table(workdir, split=_SPLIT.value, rows=_ROWS.value, settings=settings,
                           step=_STEP.value)  # fmt: skip
    print(format_table(table, _SPLIT.value))
    if _JSON_OUT.value:
        paths.atomic_write_json(_JSON_OUT.value, {"split": _SPLIT.value, "table": table}, indent=2)
        print(f"table: {_JSON_OUT.value}")


if __name__ == "__main__":
    common.run(main)
