"""Config loading: overrides parse by type, unknown keys and bad values name the key."""

import subprocess
import sys

import ml_collections
import pytest

from gpa_jax import config_utils

CONFIG_FILE = '''
import ml_collections

def get_config(arg="small"):
    c = ml_collections.ConfigDict()
    c.kind = "corpus"
    c.corpus = ml_collections.ConfigDict()
    c.corpus.name = "synthetic_speech"
    c.corpus.builder_config = arg
    c.corpus.num_workers = 0
    c.lr = 0.1
    c.use_thing = False
    c.shape = (1, 2, 3)
    c.optional = None
    return c
'''


@pytest.fixture
def config_path(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(CONFIG_FILE)
    return str(path)


def test_arg_and_typed_overrides(config_path):
    config = config_utils.load_config(
        f"{config_path}:big",
        ["corpus.num_workers=4", "lr=3", "use_thing=true", "shape=(2,2)", "optional=[1, 2]"],
    )
    assert config.corpus.builder_config == "big"
    assert config.corpus.num_workers == 4 and isinstance(config.corpus.num_workers, int)
    assert config.lr == 3.0 and isinstance(config.lr, float)
    assert config.use_thing is True
    assert config.shape == (2, 2)
    assert config.optional == [1, 2]


def test_mapping_overrides_for_sweeps(config_path):
    config = config_utils.load_config(config_path, {"corpus.num_workers": 2})
    assert config.corpus.num_workers == 2


def test_unknown_key_lists_valid_keys(config_path):
    with pytest.raises(config_utils.ConfigError, match=r"corpus\.nme.*builder_config, name, num_workers"):
        config_utils.load_config(config_path, ["corpus.nme=x"])
    with pytest.raises(config_utils.ConfigError, match=r"'nosection' is not a section"):
        config_utils.load_config(config_path, ["nosection.a=1"])


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("corpus.num_workers=abc", r"'corpus.num_workers' expects int, got 'abc'"),
        ("use_thing=maybe", r"'use_thing' expects a bool"),
        ("lr=fast", r"'lr' expects float"),
        ("corpus=1", r"'corpus' is a section"),
        ("shape=(1,", r"'shape' expects a Python literal tuple"),
        ("no_equals_sign", r"must look like key=value"),
    ],
)
def test_bad_values_name_the_key(config_path, override, pattern):
    with pytest.raises(config_utils.ConfigError, match=pattern):
        config_utils.load_config(config_path, [override])


def test_loaded_config_is_locked(config_path):
    config = config_utils.load_config(config_path)
    with pytest.raises(AttributeError):
        config.new_key = 1


def test_schema_check(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text(
        "import ml_collections\n"
        "def get_config():\n"
        "    return ml_collections.ConfigDict({'kind': 'corpus', 'corpus': {'name': 'x'}})\n"
    )
    with pytest.raises(config_utils.ConfigError, match="must define corpus.builder_config, corpus.num_workers"):
        config_utils.load_config(str(path))
    unknown_kind = ml_collections.ConfigDict({"kind": "nope"})
    with pytest.raises(config_utils.ConfigError, match="expected one of"):
        config_utils.validate(unknown_kind)


def test_missing_file_and_missing_get_config(tmp_path):
    with pytest.raises(config_utils.ConfigError, match="does not exist"):
        config_utils.load_config(str(tmp_path / "nope.py"))
    path = tmp_path / "empty.py"
    path.write_text("x = 1\n")
    with pytest.raises(config_utils.ConfigError, match="defines no get_config"):
        config_utils.load_config(str(path))


@pytest.mark.parametrize(
    "name",
    ["corpus.py:tiny", "corpus.py:default", "gpa_tiny.py", "gpa_0p3b.py", "gpa_1b.py", "gpa_8b_pod.py"],
)
def test_repo_configs_validate(name):
    config_utils.load_config(f"configs/{name}")


def test_gpa_tiny_variants_select_the_audio_input_and_bad_ones_are_named():
    hybrid = config_utils.load_config("configs/gpa_tiny.py:bf16,hybrid")
    assert (hybrid.model.audio_input, hybrid.model.dtype) == ("hybrid", "bfloat16")
    assert 0 < hybrid.model.mel_dropout < 1
    assert config_utils.load_config("configs/gpa_tiny.py").model.audio_input == "tokens"
    with pytest.raises(ValueError, match=r"\['whisper'\] unknown; valid: bf16, continuous, hybrid, se"):
        config_utils.load_config("configs/gpa_tiny.py:whisper")
    with pytest.raises(ValueError, match="one audio input"):
        config_utils.load_config("configs/gpa_tiny.py:continuous,hybrid")


def test_gpa_tiny_trains_se_only_in_its_variant():
    from gpa_jax.tasks.config import registered_tasks
    from gpa_jax.training.data_iter import task_names

    plain = config_utils.load_config("configs/gpa_tiny.py")
    assert plain.tasks.rates.se == 0 and registered_tasks(plain.tasks) == ("tts", "asr", "vc")
    assert task_names(plain) == ("tts", "asr", "vc")  # no id, metric or shape for SE
    se = config_utils.load_config("configs/gpa_tiny.py:hybrid,se")
    assert se.tasks.rates.se > 0 and se.model.audio_input == "hybrid"
    assert registered_tasks(se.tasks) == task_names(se) == ("tts", "asr", "vc", "se")
    assert all(se.tasks.rates[k] == plain.tasks.rates[k] for k in ("tts", "asr", "vc"))


def test_command_line_overrides_through_absl(config_path, tmp_path):
    """The absl flags parser hands --config.* overrides to the loader."""
    script = tmp_path / "entry.py"
    script.write_text(
        "from absl import app\n"
        "from gpa_jax import config_utils\n"
        "config_utils.define_config_flag()\n"
        "def main(argv):\n"
        "    c = config_utils.config_from_flags()\n"
        "    print('WORKERS', c.corpus.num_workers, c.corpus.builder_config)\n"
        "app.run(main, flags_parser=config_utils.flags_parser)\n"
    )
    ok = subprocess.run(
        [sys.executable, str(script), f"--config={config_path}:tiny", "--config.corpus.num_workers=3"],
        capture_output=True, text=True, check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert "WORKERS 3 tiny" in ok.stdout
    bad = subprocess.run(
        [sys.executable, str(script), f"--config={config_path}", "--config.corpus.workers=3"],
        capture_output=True, text=True, check=False,
    )
    assert bad.returncode != 0
    assert "valid keys under corpus: builder_config, name, num_workers" in bad.stderr
