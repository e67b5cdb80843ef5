"""One way to load experiment configs: ml_collections files + command-line overrides.

Every `launch/` entry point loads its config through this module:

    python -m launch.train --config=configs/gpa_tiny.py:arg --config.model.num_layers=4

A config file defines `get_config(arg=None) -> ml_collections.ConfigDict`; the text after
the `:` is passed as `arg`. Overrides are `--config.<dotted.key>=<value>`; the value is
parsed according to the type of the value already in the config, so an override can
never change a field's type. Unknown keys and unparsable values raise `ConfigError`
with the valid keys listed. After overrides, `validate` checks the fields every config
of its `kind` must carry (the `SCHEMAS` table below).

Why not `ml_collections.config_flags` alone: it reports unknown keys as a bare
AttributeError without the valid alternatives, and has no per-kind schema; we keep its
command-line syntax so users' habits carry over.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags

from gpa_jax.errors import UserError

# Required dotted keys per config kind. A new kind (or a new required field) is added
# here, next to the others, so that every entry point checks configs the same way.
# What the LM trainer (gpa_jax.training) reads from every model kind's config.
_TRAINER_KEYS: tuple[str, ...] = (
    "mesh.shape",
    "sharding_rules",
    "optimizer.learning_rate",
    "train.num_steps",
    "train.batch_size",
    "train.seq_len",
    "train.grad_accum_steps",
    "train.log_every",
    "train.eval_every",
    "train.eval_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.keep_best",
)
SCHEMAS: dict[str, tuple[str, ...]] = {
    "corpus": (
        "corpus.name",
        "corpus.builder_config",
        "corpus.num_workers",
    ),
    "codec": (
        "seed",
        "codec.sample_rate",
        "codec.n_filters",
        "codec.strides",
        "codec.dimension",
        "codec.lstm_layers",
        "codec.encoder_bidirectional",
        "codec.n_q",
        "codec.codebook_size",
        "codec.ema_decay",
        "codec.dead_code_threshold",
        "teacher.kind",
        "teacher.dim",
        "loss.lambda_wave",
        "loss.lambda_mel",
        "loss.lambda_commit",
        "loss.lambda_distill",
        "loss.lambda_adv",
        "loss.lambda_fm",
        "loss.adversarial",
        "loss.mel_scales",
        "discriminator.n_ffts",
        "optimizer.learning_rate",
        "data.crop_seconds",
        "data.batch_size",
    ),
    "lm": (
        "seed",
        "model.vocab_size",
        "model.num_layers",
        "model.embed_dim",
        *_TRAINER_KEYS,
        "data.source",
        "tasks.corpus",
        "tasks.rates",
    ),
    # The acoustic stage (gpa_jax.acoustic): NAR RVQ-2..N model or one-step vocoder,
    # trained by the LM trainer through its model-kind hook (training/model_kinds.py).
    "acoustic": (
        "seed",
        "model.variant",
        "model.n_q",
        "model.codebook_size",
        "model.num_layers",
        "model.embed_dim",
        *_TRAINER_KEYS,
        "data.token_dir",
        "data.task_names",
        "codec.config",
        "codec.checkpoint_dir",
    ),
}

CONFIG_FLAG = "config"
_OVERRIDE_PREFIX = f"--{CONFIG_FLAG}."


class ConfigError(UserError, ValueError):
    """A config file, override or schema problem, with the offending key named."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads `path.py` or `path.py:arg` by calling the file's `get_config(arg)`."""
    path, _, arg = spec.partition(":")
    if not path:
        raise ConfigError("empty --config: expected a path like configs/gpa_tiny.py[:arg]")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} (from --config={spec}) does not exist")
    module_name = "_gpa_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise ConfigError(f"config file {path!r} is not a loadable Python file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
        raise ConfigError(f"config file {path!r} defines no get_config(arg=None)")
    config = get_config(arg) if arg else get_config()
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(
            f"{path}: get_config returned {type(config).__name__}, expected ConfigDict"
        )
    return config


def _valid_keys(node: ml_collections.ConfigDict) -> str:
    return ", ".join(sorted(node.keys())) or "(none)"


def _parse_bool(key: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"config key {key!r} expects a bool (true/false), got {raw!r}")


def parse_override_value(key: str, raw: str, current: Any) -> Any:
    """Parses `raw` into the type of `current` (the value the config already holds)."""
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"config key {key!r} is a section, not a value; set one of its keys: "
            f"{_valid_keys(current)}"
        )
    if isinstance(current, bool):
        return _parse_bool(key, raw)
    try:
        if isinstance(current, int):
            return int(raw)
        if isinstance(current, float):
            return float(raw)
    except ValueError:
        raise ConfigError(
            f"config key {key!r} expects {type(current).__name__}, got {raw!r}"
        ) from None
    if isinstance(current, str):
        return raw
    if isinstance(current, (tuple, list, dict)) or current is None:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            if current is None:
                return raw  # A None placeholder accepts a plain string.
            raise ConfigError(
                f"config key {key!r} expects a Python literal {type(current).__name__}, got {raw!r}"
            ) from None
        if current is None:
            return value
        if isinstance(current, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {key!r} expects a dict, got {raw!r}")
            return value
        if not isinstance(value, (tuple, list)):
            value = (value,)
        return type(current)(value)
    raise ConfigError(
        f"config key {key!r} holds a {type(current).__name__}; it cannot be overridden"
    )


def apply_overrides(
    config: ml_collections.ConfigDict,
    overrides: Mapping[str, Any] | Iterable[str],
    source: str = "config",
) -> ml_collections.ConfigDict:
    """Applies `key=value` strings (or a {key: value} mapping) to `config` in place.

    String values are parsed by the type already in the config; mapping values (used
    by sweeps and tests) must already have that type. Returns `config`.
    """
    items: list[tuple[str, Any, bool]] = []
    if isinstance(overrides, Mapping):
        items = [(k, v, False) for k, v in overrides.items()]
    else:
        for text in overrides:
            key, sep, raw = text.partition("=")
            if not sep:
                raise ConfigError(f"override {text!r} must look like key=value (for {source})")
            items.append((key.strip(), raw, True))

    for key, value, is_text in items:
        *parents, leaf = key.split(".")
        node = config
        for depth, part in enumerate(parents):
            child = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
            if not isinstance(child, ml_collections.ConfigDict):
                where = ".".join(parents[:depth]) or "<top>"
                raise ConfigError(
                    f"unknown config key {key!r} in {source}: {part!r} is not a section "
                    f"under {where}; valid keys there: {_valid_keys(node)}"
                )
            node = child
        if leaf not in node:
            where = ".".join(parents) or "<top>"
            raise ConfigError(
                f"unknown config key {key!r} in {source}; valid keys under {where}: "
                f"{_valid_keys(node)}"
            )
        current = node[leaf]
        new = parse_override_value(key, value, current) if is_text else value
        try:
            node[leaf] = new
        except TypeError as e:  # ConfigDict's own type safety.
            raise ConfigError(f"config key {key!r} in {source}: {e}") from None
    return config


def validate(config: ml_collections.ConfigDict, source: str = "config") -> None:
    """Checks that `config.kind` is known and every field its schema requires is present."""
    kind = config.get("kind")
    if kind not in SCHEMAS:
        raise ConfigError(f"{source}: config.kind={kind!r}; expected one of {sorted(SCHEMAS)}")
    missing = []
    for dotted in SCHEMAS[kind]:
        node: Any = config
        for part in dotted.split("."):
            if not isinstance(node, ml_collections.ConfigDict) or part not in node:
                missing.append(dotted)
                break
            node = node[part]
    if missing:
        raise ConfigError(f"{source}: a {kind!r} config must define {', '.join(missing)}")


def load_config(
    spec: str, overrides: Mapping[str, Any] | Sequence[str] = ()
) -> ml_collections.ConfigDict:
    """Loads a config file, applies overrides, validates, and locks it against new keys."""
    config = load_config_file(spec)
    apply_overrides(config, overrides, source=spec)
    validate(config, source=spec)
    config.lock()
    return config


# --- absl integration --------------------------------------------------------------

_pending_overrides: list[str] = []


def define_config_flag(default: str | None = None, help_text: str | None = None) -> None:
    """Defines `--config=path.py[:arg]`; call at import time of a launch module."""
    flags.DEFINE_string(
        CONFIG_FLAG,
        default,
        help_text or "Config file, path.py[:arg]; override fields with --config.a.b=value.",
    )


def flags_parser(argv: list[str]) -> list[str]:
    """`absl.app.run(main, flags_parser=...)` hook: pulls out `--config.*` overrides."""
    rest = []
    _pending_overrides.clear()
    for arg in argv:
        if arg.startswith(_OVERRIDE_PREFIX):
            override = arg[len(_OVERRIDE_PREFIX) :]
            if "=" not in override:
                raise ConfigError(f"{arg!r} must be written --config.key=value (with '=')")
            _pending_overrides.append(override)
        else:
            rest.append(arg)
    return flags.FLAGS(rest)


def config_from_flags() -> ml_collections.ConfigDict:
    """The config named by --config with the command line's overrides applied."""
    spec = flags.FLAGS[CONFIG_FLAG].value
    if not spec:
        raise ConfigError("--config is required, e.g. --config=configs/gpa_tiny.py")
    return load_config(spec, list(_pending_overrides))


def ensure_flags_parsed() -> None:
    """Grain's worker processes read its absl flags; outside an absl app (notebooks,
    pytest, a plain script) nothing parsed them, so their defaults are accepted here."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
