"""launch/check_python_versions: pip's resolver for the other supported Pythons."""

import json
import socket
import subprocess
import sys
import zipfile

import pytest

from launch import check_python_versions as check
from tests.conftest import REPO


def _wheel(directory, name, requires=()):
    """A metadata-only py3-none-any wheel of name==1.0 requiring `requires`."""
    path = directory / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    return path


@pytest.mark.parametrize("version,expect", [("3.12", False), ("3.13", True)])
def test_markers_are_the_target_pythons(tmp_path, version, expect):
    # pip alone would evaluate this marker for the Python running it (3.11): never true.
    _wheel(tmp_path, "top", ['dep; python_version >= "3.13"'])
    _wheel(tmp_path, "dep")
    report = tmp_path / "report.json"
    args = check.target_args(version, str(tmp_path / "t")) + [
        "--only-binary=:all:", "--no-index", "--find-links", str(tmp_path),
        "--report", str(report), "top"]
    res = check.pip_as(version, args, timeout=60)
    assert res.returncode == 0, res.stderr
    names = {i["metadata"]["name"] for i in json.loads(report.read_text())["install"]}
    assert ("dep" in names) == expect


def test_constraint_markers_and_python_requires():
    _, extras, python_requires = check.read_setup()
    assert check.supported_versions(python_requires) == ["3.11", "3.12", "3.13"]
    pins = {v: check.pins_for(check.REPO / "constraints.txt", v) for v in ("3.11", "3.12", "3.13")}
    assert pins["3.11"]["pocketsphinx"] == "5.1.1" == pins["3.13"]["pocketsphinx"]
    assert pins["3.12"]["pocketsphinx"] == "5.0.4"
    # The notebook's extra must leave Colab's jax / torch alone.
    assert not [r for r in extras["judge"] if r.startswith(("torch", "jax"))]


def test_metadata_wheel_keeps_requirements(tmp_path):
    built = tmp_path / "built"
    built.mkdir()
    src = _wheel(built, "native", ["numpy>=2"])
    compiled = src.rename(built / "native-1.0-cp311-cp311-linux_x86_64.whl")
    out = check.metadata_wheel(compiled, tmp_path)
    assert out.name == "native-1.0-py3-none-any.whl"
    with zipfile.ZipFile(out) as z:
        assert "Requires-Dist: numpy>=2" in z.read("native-1.0.dist-info/METADATA").decode()


def _index_reachable():
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not _index_reachable(), reason="needs the package index (pypi.org)")
def test_pins_resolve_on_312_and_313():
    res = subprocess.run([sys.executable, "-m", "launch.check_python_versions", "--python=3.12,3.13"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr[-3000:]
    assert "Python 3.12 (cp, manylinux x86_64, glibc <= 2.35): OK" in res.stdout
    assert "Python 3.13 (cp, manylinux x86_64, glibc <= 2.35): OK" in res.stdout
