"""gpa_jax.paths on local folders and on gs:// (in-memory fake, tests/fake_gcs.py).

Backends: "local" (tmp_path) and "fake gs://" (fsspec in-memory, via etils.epath) for the
generic file operations, local_path's cache and gcsfuse mapping, and staged uploads.
"""

import os

import pytest

from gpa_jax import paths


@pytest.fixture(params=["local", "gs"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "work")
    return request.getfixturevalue("fake_gcs") + "/run"


def test_write_read_list_remove(root):
    run = os.path.join(root, "eval")
    paths.makedirs(run)
    paths.atomic_write_json(os.path.join(run, "results.json"), {"wer": 0.5})
    paths.atomic_write_text(os.path.join(run, "results.md"), "| wer |\n")
    paths.atomic_write_text(os.path.join(run, "blob.bin"), b"\x00\x01")
    assert paths.read_json(os.path.join(run, "results.json")) == {"wer": 0.5}
    assert paths.read_text(os.path.join(run, "results.md")) == "| wer |\n"
    assert paths.read_bytes(os.path.join(run, "blob.bin")) == b"\x00\x01"
    assert paths.listdir(run) == ["blob.bin", "results.json", "results.md"]
    assert paths.glob(run, "*.json") == [os.path.join(run, "results.json")]
    assert paths.isfile(os.path.join(run, "results.md")) and paths.isdir(run)
    with paths.open_file(os.path.join(run, "log.jsonl"), "a") as f:
        f.write("one\n")
    assert paths.read_text(os.path.join(run, "log.jsonl")) == "one\n"
    paths.remove(os.path.join(run, "blob.bin"))
    paths.remove(os.path.join(run, "blob.bin"))  # a missing file is fine
    assert not paths.exists(os.path.join(run, "blob.bin"))
    paths.rmtree(run)
    assert not paths.exists(run) and paths.listdir(run) == []


def test_missing_file_names_the_path(root):
    missing = os.path.join(root, "nothing.json")
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        paths.read_json(missing)
    if paths.is_remote(root):  # a local path is handed on as is; its reader says
        with pytest.raises(FileNotFoundError, match="gs://fake-bucket/run/nothing.json"):
            paths.local_path(missing)


def test_local_path_is_identity_for_local_files(tmp_path):
    assert paths.local_path(str(tmp_path / "x")) == str(tmp_path / "x")


def test_local_path_caches_remote_objects(fake_gcs, tmp_path):
    url = f"{fake_gcs}/tokens/train-00000-of-00001.array_record"
    paths.atomic_write_text(url, b"first")
    local = paths.local_path(url)
    assert local.startswith(str(tmp_path / "remote_cache"))
    assert local.endswith("gs/fake-bucket/tokens/train-00000-of-00001.array_record")
    with open(local, "rb") as f:
        assert f.read() == b"first"
    assert paths.local_path(url) == local  # reused, not copied again
    paths.atomic_write_text(url, b"rewritten")  # a new object: the cache follows
    with open(paths.local_path(url), "rb") as f:
        assert f.read() == b"rewritten"
    assert [n for n in os.listdir(os.path.dirname(local)) if n.startswith(".download")] == []


def test_cache_dir_default_and_tilde(monkeypatch):
    monkeypatch.delenv(paths.CACHE_DIR_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere/cache")
    assert paths.cache_dir() == "/somewhere/cache/gpa_jax/remote"
    monkeypatch.setenv(paths.CACHE_DIR_ENV, "~/gpa_cache")
    assert paths.cache_dir() == os.path.expanduser("~/gpa_cache")


def test_local_path_reads_through_a_gcsfuse_mount(monkeypatch, tmp_path):
    mount = tmp_path / "gcs"
    (mount / "bucket" / "spm").mkdir(parents=True)
    (mount / "bucket" / "spm" / "text.model").write_bytes(b"model")
    monkeypatch.setenv(paths.GCSFUSE_ROOT_ENV, str(mount))
    assert paths.local_path("gs://bucket/spm/text.model") == str(mount / "bucket/spm/text.model")
    with pytest.raises(FileNotFoundError, match=r"gs://bucket/spm/other.model.*GPA_JAX_GCSFUSE_ROOT"):
        paths.local_path("gs://bucket/spm/other.model")


def test_staging_dir_and_upload(root):
    target = os.path.join(root, "shards")
    with paths.staging_dir(target) as stage:
        with open(os.path.join(stage, "a.bin"), "wb") as f:
            f.write(b"abc")
        paths.upload(os.path.join(stage, "a.bin"), os.path.join(target, "a.bin"))
    assert paths.read_bytes(os.path.join(target, "a.bin")) == b"abc"


def test_bad_url_is_named():
    with pytest.raises(ValueError, match="gs://"):
        paths.local_path("gs://")


def test_cache_path_mirrors_urls_and_keeps_local_paths(monkeypatch, tmp_path):
    from gpa_jax.codec.data import clips_dir

    monkeypatch.setenv(paths.CACHE_DIR_ENV, str(tmp_path / "c"))
    assert paths.cache_path("runs/demo") == "runs/demo"
    assert paths.cache_path("gs://b/runs/x") == str(tmp_path / "c" / "gs" / "b" / "runs" / "x")
    # The codec's memory-mapped clip store stays local for a gs:// work dir.
    assert clips_dir("gs://b/w", "synthetic_speech/tiny", "train") == str(
        tmp_path / "c" / "gs" / "b" / "w" / "codec" / "clips" / "synthetic_speech" / "tiny" / "train"
    )
    assert clips_dir("runs/w", "c", "train") == os.path.join("runs/w", "codec", "clips", "c", "train")
    assert paths.absolute("gs://b/x") == "gs://b/x" and os.path.isabs(paths.absolute("x"))
