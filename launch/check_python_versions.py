"""Do setup.py's requirements, pinned by constraints.txt, resolve on each supported Python?

For every Python version python_requires allows (or those given with --python), runs pip's
resolver (`pip install --dry-run --only-binary=:all:`) for CPython on manylinux x86_64 with
glibc <= 2.35 (Colab, Ubuntu 22.04 TPU VMs), over install_requires plus the extras that
launch/setup_env.sh and the notebook install. A pin with no wheel for that version is built
here from its sdist and listed as "must build" (a compiled one needs a C/C++ toolchain and the
Python headers on the target); the resolve then goes on with that sdist's metadata.
resemblyzer, installed with --no-deps by setup_env.sh, is checked on its own.

pip evaluates environment markers against the interpreter running it, not --python-version
(pypa/pip#11010), so each resolve runs in a pip whose marker environment is the target's.

  python -m launch.check_python_versions [--python=3.12,3.13] [--extras=dev,eval,bench,serve,judge]

Prints one block per version; exits 1 when a version does not resolve. Needs the package index.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXTRAS = ("dev", "eval", "bench", "serve", "judge")  # setup_env.sh's and the notebook's
NO_DEPS = ("resemblyzer",)  # setup_env.sh installs these with --no-deps
MAX_GLIBC_MINOR = 35  # Ubuntu 22.04 (Colab, TPU VM images)

# Runs pip with the marker environment of argv[1] ("3.12"), then pip's own argv[2:].
_PIP_AS = """
import sys
from pip._vendor.packaging import markers
version = sys.argv[1]
env = dict(markers.default_environment(), python_version=version,
           python_full_version=version + ".0", implementation_version=version + ".0")
markers.default_environment = lambda: dict(env)
from pip._internal.cli.main import main
sys.exit(main(sys.argv[2:]))
"""


def platforms(max_glibc_minor: int = MAX_GLIBC_MINOR) -> list[str]:
    """manylinux x86_64 tags a glibc-2.<max> system accepts (pip does not expand them itself)."""
    tags = [f"manylinux_2_{m}_x86_64" for m in range(max_glibc_minor, 4, -1)]
    return tags + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]


def read_setup(path: Path = REPO / "setup.py") -> tuple[list[str], dict[str, list[str]], str]:
    """(install_requires, extras_require, python_requires) of setup.py, with setup() stubbed out."""
    import setuptools

    captured: dict = {}
    real_setup = setuptools.setup
    setuptools.setup = lambda **kwargs: captured.update(kwargs)
    try:
        runpy.run_path(str(path))
    finally:
        setuptools.setup = real_setup
    return captured["install_requires"], captured["extras_require"], captured["python_requires"]


def supported_versions(python_requires: str) -> list[str]:
    spec = SpecifierSet(python_requires)
    return [f"3.{m}" for m in range(8, 20) if spec.contains(f"3.{m}.0")]


def marker_env(version: str) -> dict[str, str]:
    return dict(default_environment(), python_version=version,
                python_full_version=version + ".0", implementation_version=version + ".0")


def pins_for(constraints: Path, version: str) -> dict[str, str]:
    """{canonical name: pinned version} of the constraints whose markers hold on `version`."""
    env, pins = marker_env(version), {}
    for line in constraints.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        spec = [s for s in req.specifier if s.operator == "=="]
        if spec and (req.marker is None or req.marker.evaluate(env)):
            pins[canonicalize_name(req.name)] = spec[0].version
    return pins


def pip_as(version: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return subprocess.run([sys.executable, "-c", _PIP_AS, version, *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def target_args(version: str, target: str) -> list[str]:
    # Not --quiet: that also drops the resolver's list of packages with no usable distribution.
    args = ["install", "--dry-run", "--ignore-installed", "--progress-bar=off", "--target", target,
            "--python-version", version, "--implementation", "cp"]
    for tag in platforms():
        args += ["--platform", tag]
    return args


def missing_names(stderr: str) -> list[str]:
    """Packages pip found no usable distribution for, from its resolver error."""
    names = re.findall(r"No matching distribution found for ([A-Za-z0-9._-]+)", stderr)
    block = re.search(r"no matching distributions available for your environment:\n((?:    \S+\n?)+)",
                      stderr)
    if block:
        names += block.group(1).split()
    return list(dict.fromkeys(canonicalize_name(n) for n in names))


def build_sdist(name: str, version: str, out: Path, timeout: float) -> tuple[Path | None, str]:
    """Builds name==version from its sdist with this interpreter: (wheel, "") or (None, error)."""
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                          "--no-binary", name, "--wheel-dir", str(out), f"{name}=={version}"],
                         capture_output=True, text=True, timeout=timeout)
    wheels = [p for p in set(out.iterdir()) - before if p.suffix == ".whl"]
    if res.returncode or not wheels:
        return None, (res.stderr or res.stdout)[-1500:]
    return wheels[0], ""


def metadata_wheel(built: Path, out_dir: Path) -> Path:
    """A py3-none-any wheel holding only `built`'s metadata: lets the resolve for another Python
    go on past a compiled sdist (its requirements are what the resolver needs)."""
    name, version, _, _ = parse_wheel_filename(built.name)
    with zipfile.ZipFile(built) as zin:
        meta = next(n for n in zin.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = zin.read(meta)
    dist_info = meta.split("/")[0]
    out = out_dir / f"{str(name).replace('-', '_')}-{version}-py3-none-any.whl"
    wheel = b"Wheel-Version: 1.0\nGenerator: check_python_versions\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    with zipfile.ZipFile(out, "w") as zout:
        zout.writestr(f"{dist_info}/METADATA", metadata)
        zout.writestr(f"{dist_info}/WHEEL", wheel)
        zout.writestr(f"{dist_info}/RECORD", f"{dist_info}/METADATA,,\n{dist_info}/WHEEL,,\n{dist_info}/RECORD,,\n")
    return out


def check_version(version: str, requirements: list[str], constraints: Path, work: Path,
                  timeout: float, built: dict) -> tuple[bool, list[str]]:
    """Resolves `requirements` for `version`; (ok, report lines)."""
    pins = pins_for(constraints, version)
    vdir = work / version
    links = vdir / "links"
    links.mkdir(parents=True)
    reqs = vdir / "requirements.txt"
    reqs.write_text("\n".join(requirements) + "\n")
    lines, must_build = [], []
    for _ in range(10):  # one round per sdist-only pin the resolver stops at
        report = vdir / "report.json"
        args = target_args(version, str(vdir / "target")) + [
            "--only-binary=:all:", "--find-links", str(links), "--report", str(report),
            "-r", str(reqs), "-c", str(constraints)]
        res = pip_as(version, args, timeout)
        if res.returncode == 0:
            break
        output = res.stdout + res.stderr
        names = [n for n in missing_names(output) if n in pins and n not in must_build]
        if not names:
            return False, lines + ["  resolve failed:", *_tail(output)]
        for name in names:
            key = (name, pins[name])
            if key not in built:
                built[key] = build_sdist(name, pins[name], work / "sdists", timeout)
            wheel, error = built[key]
            if wheel is None:
                return False, lines + [f"  {name}=={pins[name]}: no wheel for {version} and its "
                                       "sdist does not build here:", *_tail(error)]
            pure = wheel.name.endswith("-none-any.whl")
            if pure:
                shutil.copy(wheel, links)
            else:
                metadata_wheel(wheel, links)
            must_build.append(name)
            lines.append(f"  must build: {name}=={pins[name]} (sdist, "
                         + ("pure Python)" if pure else "compiled: needs a C/C++ toolchain and "
                            f"Python {version} headers)"))
    else:
        return False, lines + ["  resolve failed: too many sdist-only pins", *_tail(output)]
    installed = json.loads(report.read_text())["install"]
    unpinned = sorted(f"{it['metadata']['name']}=={it['metadata']['version']}" for it in installed
                      if canonicalize_name(it["metadata"]["name"]) not in pins)
    for name in NO_DEPS:
        args = target_args(version, str(vdir / "target")) + [
            "--only-binary=:all:", "--no-deps", "-c", str(constraints), name]
        res = pip_as(version, args, timeout)
        if res.returncode:
            return False, lines + [f"  {name} (--no-deps): no wheel", *_tail(res.stdout + res.stderr)]
    lines.insert(0, f"  resolves: {len(installed)} distributions, {len(installed) - len(unpinned)} "
                    f"pinned, {len(must_build)} built from sdist; {', '.join(NO_DEPS)} (--no-deps) ok")
    # torch's CUDA wheels: constraints.txt was frozen from a CPU-only torch.
    cuda = [u for u in unpinned if u.startswith(("nvidia-", "cuda-", "triton=="))]
    other = [u for u in unpinned if u not in cuda]
    if unpinned:
        lines.append("  not in constraints.txt (resolved freely): " + ", ".join(
            other + ([f"{len(cuda)} CUDA wheels of torch"] if cuda else [])))
    return True, lines


def _tail(text: str, n: int = 15) -> list[str]:
    keep = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("WARNING: Location")]
    return ["    " + ln for ln in keep[-n:]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="", help="comma-separated versions (default: all "
                        "that python_requires allows)")
    parser.add_argument("--extras", default=",".join(DEFAULT_EXTRAS))
    parser.add_argument("--constraints", default=str(REPO / "constraints.txt"))
    parser.add_argument("--timeout", type=float, default=300, help="seconds per pip call")
    args = parser.parse_args(argv)
    install_requires, extras, python_requires = read_setup()
    versions = args.python.split(",") if args.python else supported_versions(python_requires)
    requirements = list(install_requires)
    for extra in filter(None, args.extras.split(",")):
        requirements += [r for r in extras[extra] if r not in requirements]
    ok, built = True, {}
    with tempfile.TemporaryDirectory(prefix="pyversions-") as tmp:
        for version in versions:
            if not SpecifierSet(python_requires).contains(f"{version}.0"):
                print(f"Python {version}: outside python_requires {python_requires!r}")
                ok = False
                continue
            good, lines = check_version(version, requirements, Path(args.constraints), Path(tmp),
                                        args.timeout, built)
            print(f"Python {version} (cp, manylinux x86_64, glibc <= 2.{MAX_GLIBC_MINOR}): "
                  + ("OK" if good else "FAILED"))
            print("\n".join(lines), flush=True)
            ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
