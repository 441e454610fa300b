"""Archive extraction of the URL source, property-based: hypothesis builds hostile tar and zip archives (links,
chains of links, absolute names, '..', devices, fifos, members below links, duplicates, huge ratios) and every
outcome must keep everything inside the target: either a GpufleetError and an empty target, or a target holding
only regular files, directories and symlinks that resolve inside it. Nothing outside the target ever changes."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import warnings
import zipfile

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import archive

# hypothesis keeps caches in ./.hypothesis by default: keep them out of the work tree
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "gpufleet-hypothesis"))
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PARTS = ["a", "b", "c", "d", "..", ".", "", "x" * 40]
TARGET_PARTS = ["a", "b", "c", "..", ".", "", "etc", "outside", "secret"]
# Bounded (a few seconds of CPU), no example database written into the work tree.
SETTINGS = settings(max_examples=120, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

names = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "/", "./", "../"]),
    st.lists(st.sampled_from(PARTS), min_size=1, max_size=4),
)
link_targets = st.builds(
    lambda lead, parts: lead + "/".join(parts),
    st.sampled_from(["", "", "", "/", "../"]),
    st.lists(st.sampled_from(TARGET_PARTS), min_size=0, max_size=5),
)
KINDS = ["file", "file", "dir", "symlink", "symlink", "hardlink", "chr", "blk", "fifo", "big"]
members = st.lists(st.tuples(names, st.sampled_from(KINDS), link_targets), min_size=1, max_size=8)


def _build_tar(path: str, spec: list[tuple[str, str, str]], gz: bool) -> None:
    with tarfile.open(path, "w:gz" if gz else "w", format=tarfile.GNU_FORMAT) as t:
        for name, kind, target in spec:
            info = tarfile.TarInfo(name)
            data = None
            if kind in ("file", "big"):
                payload = b"p" * 10 if kind == "file" else b"\0" * (1 << 20)
                info.size = len(payload)
                data = io.BytesIO(payload)
            elif kind == "dir":
                info.type = tarfile.DIRTYPE
            elif kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, target
            elif kind == "hardlink":
                info.type, info.linkname = tarfile.LNKTYPE, target
            elif kind == "chr":
                info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
            elif kind == "blk":
                info.type = tarfile.BLKTYPE
            else:
                info.type = tarfile.FIFOTYPE
            t.addfile(info, data)


def _build_zip(path: str, spec: list[tuple[str, str, str]]) -> None:
    modes = {"file": 0o100644, "big": 0o100644, "dir": 0o040755, "symlink": 0o120777, "hardlink": 0o100644}
    modes |= {"chr": 0o020644, "blk": 0o060644, "fifo": 0o010644}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are part of the test
        for name, kind, target in spec:
            zname = name.rstrip("/") + "/" if kind == "dir" else name
            info = zipfile.ZipInfo(zname or "empty")
            info.external_attr = modes[kind] << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            data = target.encode() if kind == "symlink" else (b"\0" * (1 << 20) if kind == "big" else b"p" * 10)
            try:
                z.writestr(info, b"" if kind == "dir" else data)
            except ValueError:  # zipfile refuses some names itself
                continue


def _snapshot(base: str, skip: str) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != skip]
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            s = os.lstat(p)
            digest = ""
            if stat.S_ISREG(s.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(p, base)] = (stat.S_IFMT(s.st_mode), digest, s.st_mtime_ns)
    return out


def _assert_contained(out: str) -> None:
    """Only regular files, directories and symlinks under `out`; every symlink resolves to something that exists
    inside `out` (never outside, never dangling)."""
    real_out = os.path.realpath(out)
    for dirpath, dirnames, filenames in os.walk(out):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            mode = os.lstat(p).st_mode
            assert stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode), p
            if stat.S_ISLNK(mode):
                target = os.path.realpath(p)
                assert target.startswith(real_out + "/"), (p, os.readlink(p), target)
                assert os.path.exists(target), (p, os.readlink(p))


def _check(spec: list[tuple[str, str, str]], kind: str, strip_top: bool, monkeypatch) -> None:
    monkeypatch.setattr(archive, "RATIO_FLOOR", 512 * 1024)  # so that a generated 'big' member trips the ratio
    base = tempfile.mkdtemp(prefix="gpufleet-archive-prop-")
    try:
        os.makedirs(os.path.join(base, "outside"))
        with open(os.path.join(base, "outside", "secret"), "w") as f:
            f.write("secret")
        os.makedirs(os.path.join(base, "work", "out"))
        out = os.path.join(base, "work", "out")
        path = os.path.join(base, "a." + ("zip" if kind == "zip" else "tar.gz" if kind == "tar.gz" else "tar"))
        if kind == "zip":
            _build_zip(path, spec)
        else:
            _build_tar(path, spec, gz=kind == "tar.gz")
        before = _snapshot(base, out)
        try:
            written = archive.extract_archive(path, kind, out, strip_top=strip_top)
        except GpufleetError as err:
            assert err.details.get("failure_class") in ("bad_archive", "disk_full"), err.details
            assert str(err) and "\n" not in str(err)
            assert os.listdir(out) == [], "a refused archive leaves the target empty"
        else:
            _assert_contained(out)
            for rel in written:
                assert os.path.isfile(os.path.join(out, rel)) and not os.path.islink(os.path.join(out, rel))
        assert _snapshot(base, out) == before, "nothing outside the target changed"
    finally:
        shutil.rmtree(base, ignore_errors=True)


@SETTINGS
@given(spec=members, gz=st.booleans(), strip_top=st.booleans())
def test_hostile_tar_stays_inside(spec, gz, strip_top):
    with pytest.MonkeyPatch.context() as mp:
        _check(spec, "tar.gz" if gz else "tar", strip_top, mp)


@SETTINGS
@given(spec=members, strip_top=st.booleans())
def test_hostile_zip_stays_inside(spec, strip_top):
    with pytest.MonkeyPatch.context() as mp:
        _check(spec, "zip", strip_top, mp)


@settings(SETTINGS, max_examples=60)
@given(depth=st.integers(min_value=1, max_value=6), ups=st.integers(min_value=0, max_value=8), gz=st.booleans())
def test_link_chains_never_escape(depth, ups, gz):
    """Chains in the shape of the tarfile CVEs: each link points at the previous one, the last climbs with '..'
    and a file is written through it."""
    spec = [("d", "dir", "")]
    prev = "d"
    for i in range(depth):
        spec.append((f"l{i}", "symlink", prev if i % 2 else f"{prev}/."))
        prev = f"l{i}"
    spec.append(("esc", "symlink", prev + "/.." * ups))
    spec.append(("esc/pwned", "file", ""))
    with pytest.MonkeyPatch.context() as mp:
        _check(spec, "tar.gz" if gz else "tar", False, mp)


def test_good_archive_with_links_round_trips(tmp_path):
    spec = [
        ("m/config.json", "file", ""),
        ("m/sub", "dir", ""),
        ("m/sub/w.bin", "file", ""),
        ("m/alias.json", "symlink", "config.json"),
        ("m/sub/up", "symlink", "../alias.json"),  # a chain inside: written as a direct link
        ("m/copy.bin", "hardlink", "m/sub/w.bin"),
    ]
    path = str(tmp_path / "a.tar")
    _build_tar(path, spec, gz=False)
    out = tmp_path / "out"
    out.mkdir()
    assert archive.extract_archive(path, "tar", str(out), strip_top=True) == ["config.json", "copy.bin", "sub/w.bin"]
    assert os.readlink(out / "alias.json") == "config.json"
    assert os.readlink(out / "sub" / "up") == "../config.json"  # resolved, no chain left on disk
    assert not os.path.islink(out / "copy.bin") and (out / "copy.bin").read_bytes() == b"p" * 10
    _assert_contained(str(out))
