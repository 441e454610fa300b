"""model_sync against bad and hostile input: every case ends in one GpufleetError whose message says what is wrong
and how to fix it (never another exception), and leaves the file tree as it was.

Input refused up front (options, hub answers) leaves the whole tree byte for byte unchanged, the model root's
bookkeeping included. Input that can only be judged once fetched (an archive's members, a short body) may leave
the run's own bookkeeping (the lock file, the progress status) rewritten, and nothing else: no staging, no model
change, nothing outside the target."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import stat
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import archive, hub
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import store as fs
from ansible_collections.gpufleet.vllm.plugins.module_utils._model import sync as model_sync

SIM = Path(__file__).resolve().parents[4] / "sim" / "hub"
BOOKKEEPING = (".gpufleet/locks/", ".gpufleet/status/")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_test_bad_{name}", SIM / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def snapshot(base: Path, loose: bool = False) -> dict[str, tuple]:
    """Every entry under `base` (links not followed): type, size, content digest, link target, mtime. With `loose`,
    the run's own bookkeeping files (lock, status) are left out."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            rel = os.path.relpath(p, base)
            st = os.lstat(p)
            if loose and any(f"/{b}" in f"/{rel}" for b in BOOKKEEPING):
                continue
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", st.st_size, hashlib.sha256(f.read()).hexdigest(), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def _model_files() -> dict[str, bytes]:
    return {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}", "model.bin": b"w" * 64}


@pytest.fixture
def bed(tmp_path):
    """A models root with model 'm' installed (from a local checkpoint), a checkpoint allowlist, and a secret
    outside everything."""
    ck = tmp_path / "ckpts" / "good"
    ck.mkdir(parents=True)
    for k, v in _model_files().items():
        (ck / k).write_bytes(v)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("root only")
    root = tmp_path / "models"
    res = model_sync.sync(
        {
            "name": "m",
            "source": "local",
            "src": str(ck),
            "allowed_dirs": [str(tmp_path / "ckpts")],
            "models_root": str(root),
        }
    )
    assert res["changed"]
    return tmp_path


def expect_refusal(base: Path, params: dict, what: str, fix: str, failure_class: str | None = None, loose=False):
    before = snapshot(base, loose)
    with pytest.raises(GpufleetError) as e:  # any other exception is a traceback for the user: the test fails
        model_sync.sync(params)
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg
    assert_re(what, msg)
    assert_re(fix, msg)
    if failure_class:
        assert e.value.details.get("failure_class") == failure_class, e.value.details
    assert snapshot(base, loose) == before
    return e.value


def assert_re(pattern: str, msg: str) -> None:
    import re

    assert re.search(pattern, msg), f"{pattern!r} not in {msg!r}"


# ---------------------------------------------------------------- options, before anything is touched


def _p(base: Path, **kw) -> dict:
    return {"name": "m", "models_root": str(base / "models"), **kw}


def _hf(base: Path, **kw) -> dict:
    return _p(base, **{"source": "hf", "repo_id": "org/model", "hf_endpoint": "http://127.0.0.1:9", **kw})


def _local(base: Path, **kw) -> dict:
    ck = {"src": str(base / "ckpts" / "good"), "allowed_dirs": [str(base / "ckpts")]}
    return _p(base, **{"source": "local", **ck, **kw})


def _url(base: Path, **kw) -> dict:
    return _p(base, **{"source": "url", "url": "http://127.0.0.1:9/model.gguf", **kw})


OPTION_CASES = [
    ("empty name", lambda b: _local(b, name=""), r"model name '' is not usable", r"use letters"),
    ("dot-dot name", lambda b: _local(b, name=".."), r"model name '\.\.'", r"use letters"),
    ("slash name", lambda b: _local(b, name="a/b"), r"'a/b' is not usable", r"without '/'"),
    ("hidden name", lambda b: _local(b, name=".gpufleet"), r"'\.gpufleet' is not usable", r"not starting with"),
    ("long name", lambda b: _local(b, name="x" * 240), r"longer than 200 bytes", r"use a shorter name"),
    ("control char name", lambda b: _local(b, name="a\nb"), r"control character", r"use a shorter name of letters"),
    (
        "relative models_root",
        lambda b: _local(b, models_root="models"),
        r"models_root 'models' is not an absolute path",
        r"give one",
    ),
    ("dot-dot models_root", lambda b: _local(b, models_root=f"{b}/x/../models"), r"has a '\.\.' part", r"give the dir"),
    (
        "negative max_workers",
        lambda b: _hf(b, max_workers=-1),
        r"max_workers must be .* 1 to 64 \(got -1\)",
        r"parallel",
    ),
    ("zero max_workers", lambda b: _hf(b, max_workers=0), r"max_workers .*\(got 0\)", r"parallel"),
    ("huge max_workers", lambda b: _hf(b, max_workers=10_000), r"max_workers .*\(got 10000\)", r"from 1 to 64"),
    ("negative lock_timeout", lambda b: _local(b, lock_timeout=-5), r"lock_timeout .*\(got -5\)", r"from 0 to"),
    ("unknown source", lambda b: _p(b, source="ftp"), r"source 'ftp' is not one of", r"say where"),
    ("hf without repo_id", lambda b: _p(b, source="hf"), r"source: hf needs repo_id", r"needs repo_id"),
    (
        "repo_id traversal",
        lambda b: _hf(b, repo_id="../../etc"),
        r"repo_id '\.\./\.\./etc' is not a hub repo id",
        "ORG/NAME",
    ),
    ("repo_id three parts", lambda b: _hf(b, repo_id="a/b/c"), r"repo_id 'a/b/c'", r"use ORG/NAME"),
    ("repo_id dot-dot", lambda b: _hf(b, repo_id="org/na..me"), r"not a hub repo id", r"no '\.\.'"),
    (
        "revision with newline",
        lambda b: _hf(b, revision="main\n"),
        r"revision 'main\\n' is not a branch",
        r"use e\.g\.",
    ),
    (
        "file endpoint",
        lambda b: _hf(b, hf_endpoint="file:///etc"),
        r"hf_endpoint 'file:///etc' is not an http",
        "use e.g.",
    ),
    ("empty pattern", lambda b: _hf(b, allow_patterns=[""]), r"allow_patterns holds ''", r"non-empty glob"),
    ("relative src", lambda b: _local(b, src="ckpts/good"), r"src 'ckpts/good' is relative", r"give the absolute"),
    (
        "relative allowed_dirs",
        lambda b: _local(b, allowed_dirs=["ckpts"]),
        r"allowed_dirs entry 'ckpts'",
        r"list the dir",
    ),
    ("root as allowed_dirs", lambda b: _local(b, allowed_dirs=["/"]), r"allowed_dirs entry '/'", r"e\.g\. /srv"),
    ("no allowed_dirs", lambda b: _local(b, allowed_dirs=[]), r"needs allowed_dirs", r"the directories a local"),
    ("src outside", lambda b: _local(b, src=str(b / "outside")), r"is not under allowed_dirs", r"add its directory"),
    ("src with dot-dot", lambda b: _local(b, src=f"{b}/ckpts/../outside"), r"without '\.\.' components", r"absolute"),
    ("file url", lambda b: _url(b, url="file:///etc/passwd"), r"must be http:// or https://", r"got 'file'"),
    ("url without name", lambda b: _url(b, url="https://example.com/"), r"does not end in a file name", r"point it"),
    ("url without host", lambda b: _url(b, url="http:///x.gguf"), r"has no host", r"use http\(s\)://HOST"),
    ("url hidden name", lambda b: _url(b, url="http://h/.gpufleet-staging"), r"hidden", r"serve the file under"),
    ("url with space", lambda b: _url(b, url="http://h/a b.gguf"), r"whitespace", r"percent-encode"),
    ("url bad port", lambda b: _url(b, url="http://h:99999/x.gguf"), r"does not parse", r"http://h:99999"),
    ("md5 checksum", lambda b: _url(b, checksum="md5:abc"), r"checksum 'md5:abc'", r"sha256:<64 hex digits>"),
]


@pytest.mark.parametrize(("case", "make", "what", "fix"), OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_bad_option(bed, case, make, what, fix):
    err = expect_refusal(bed, make(bed), what, fix)
    assert err.details.get("failure_class") in ("bad_args", "bad_source")


def test_local_symlinks_and_fifo_refused(bed):
    ck = bed / "ckpts"
    (ck / "esc").symlink_to(bed / "outside")
    expect_refusal(bed, _local(bed, src=str(ck / "esc")), r"not under allowed_dirs", r"add its directory")
    inner = ck / "inner"
    inner.mkdir()
    (inner / "config.json").write_text("{}")
    (inner / "tokenizer.json").symlink_to(bed / "outside" / "secret")
    expect_refusal(bed, _local(bed, src=str(inner)), r"points outside allowed_dirs", r"refused")
    os.unlink(inner / "tokenizer.json")
    os.mkfifo(inner / "fifo")
    expect_refusal(bed, _local(bed, src=str(inner)), r"fifo is not a regular file", r"refused")


def test_local_file_swapped_for_a_symlink_after_the_check(bed, monkeypatch):
    """The race: local_files checks a regular file, then it becomes a symlink to a root-only file before the copy.
    The copy opens without following links, so the secret never lands in the model."""
    ck = bed / "ckpts" / "racy"
    ck.mkdir()
    for k, v in _model_files().items():
        (ck / k).write_bytes(v)
    real_local_files = fs.local_files

    def local_files_then_swap(src, allowed):
        files = real_local_files(src, allowed)
        os.unlink(ck / "model.bin")
        (ck / "model.bin").symlink_to(bed / "outside" / "secret")
        return files

    monkeypatch.setattr(fs, "local_files", local_files_then_swap)
    before = snapshot(bed / "models", loose=True)
    with pytest.raises(GpufleetError, match=r"model.bin now resolves to .*outside allowed_dirs .*refused") as e:
        model_sync.sync(_local(bed, name="racy", src=str(ck)))
    assert e.value.details["failure_class"] == "bad_source"
    assert snapshot(bed / "models", loose=True) == before
    for dirpath, _dirs, files in os.walk(bed / "models"):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                assert Path(p).read_bytes() != b"root only", p


def test_local_directory_swapped_for_a_symlink_inside_the_allowlist_is_not_followed(bed, monkeypatch):
    """A directory on the way replaced by a symlink after the realpath: open_no_links fails instead of following."""
    ck = bed / "ckpts" / "dirrace"
    (ck / "sub").mkdir(parents=True)
    (ck / "config.json").write_text("{}")
    (ck / "sub" / "w.bin").write_bytes(b"w")
    real_open = fs.open_no_links

    def swap_then_open(path):
        if path.endswith("/sub/w.bin"):
            os.rename(ck / "sub", ck / "sub.old")
            (ck / "sub").symlink_to(bed / "outside")
            (bed / "outside" / "w.bin").write_text("root only")
        return real_open(path)

    monkeypatch.setattr(fs, "open_no_links", swap_then_open)
    with pytest.raises(GpufleetError, match=r"sub/w.bin changed while copying .*refused, run again") as e:
        model_sync.sync(_local(bed, name="dirrace", src=str(ck), validate=False))
    assert e.value.details["failure_class"] == "bad_source"
    assert not (bed / "models" / "dirrace").exists()
    assert not [e for e in os.listdir(bed / "models" / ".gpufleet" / "staging") if e.startswith("dirrace.")]


# ---------------------------------------------------------------- hostile hub answers


@pytest.fixture(scope="module")
def hostile_hub(tmp_path_factory):
    fakehub, make_repo = _load("fakehub"), _load("make_repo")
    root = tmp_path_factory.mktemp("hostilehub")
    with fakehub.FakeHub(root) as h:
        yield h, root, make_repo


def _hostile_repo(hostile_hub, repo_id: str, extra: dict[str, bytes] | None = None, bad_sha: str | None = None):
    h, root, make_repo = hostile_hub
    sha = make_repo.make_repo(root, repo_id, shards=1, shard_bytes=64)
    if extra:
        files = {**{k: v for k, v in _model_files().items()}, **extra}
        sha = make_repo.commit_files(root, repo_id, files)
    if bad_sha is not None:
        repo = make_repo.load_repo(root, repo_id)
        repo["commits"][bad_sha] = repo["commits"][sha]
        repo["refs"]["main"] = bad_sha
        make_repo.save_repo(root, repo_id, repo)
    return h.url, sha


HUB_CASES = [
    (
        "commit id traversal",
        {"bad_sha": "../../../../tmp/evil-commit-0000000000000"},
        r"commit id '\.\./",
        r"check that",
    ),
    ("commit id not hex", {"bad_sha": "g" * 40}, r"commit id 'g{40}'.* not a 40-hex", r"hf_endpoint points"),
    (
        "listed dot-dot",
        {"extra": {"../evil.json": b"x"}},
        r"lists a file '\.\./evil\.json'.*'\.\.' part",
        r"trusted hub",
    ),
    ("listed absolute", {"extra": {"/tmp/evil.json": b"x"}}, r"lists a file '/tmp/evil\.json'.*is absolute", r"check"),
    ("listed reserved", {"extra": {".cache/huggingface/x": b"x"}}, r"bookkeeping", r"trusted hub"),
    ("listed backslash", {"extra": {"a\\..\\..\\evil": b"x"}}, r"backslash", r"trusted hub"),
]


@pytest.mark.parametrize("backend", ["builtin", "huggingface_hub"])
@pytest.mark.parametrize(("case", "hostile", "what", "fix"), HUB_CASES, ids=[c[0] for c in HUB_CASES])
def test_hostile_hub_answer(bed, hostile_hub, backend, case, hostile, what, fix):
    repo = f"org/hostile-{abs(hash((case, backend))) % 10**8}"
    url, _sha = _hostile_repo(hostile_hub, repo, **hostile)
    params = _p(bed, source="hf", repo_id=repo, hf_endpoint=url, download_backend=backend)
    expect_refusal(bed, params, what, fix, failure_class="hub_error")
    assert not (bed / "evil.json").exists() and not Path("/tmp/evil.json").exists()


def test_builtin_downloader_checks_names_itself(bed, hostile_hub, tmp_path):
    url, sha = _hostile_repo(hostile_hub, "org/direct-builtin", extra={"../evil.json": b"x"})
    staging = tmp_path / "st" / "inner"
    before = snapshot(tmp_path)
    with pytest.raises(GpufleetError, match=r"'\.\./evil\.json'.*refused before anything was written"):
        hub.download_builtin(url, "org/direct-builtin", sha, None, str(staging), {"../evil.json": 1})
    assert snapshot(tmp_path) == before


def test_huggingface_hub_refusal_is_one_clear_error(bed, hostile_hub, tmp_path):
    """snapshot_download lists the repo itself; its ValueError on a '..' name becomes a GpufleetError."""
    url, sha = _hostile_repo(hostile_hub, "org/direct-hfh", extra={"../evil.json": b"x"})
    staging = tmp_path / "st" / "inner"
    with pytest.raises(GpufleetError, match=r"huggingface_hub refused the hub's answer .*trusted hub") as e:
        hub.download(url, "org/direct-hfh", sha, None, str(staging), None, [])
    assert e.value.details["failure_class"] == "hub_error"
    assert not (tmp_path / "st" / "evil.json").exists()


# ---------------------------------------------------------------- hostile archives and bodies


class _Files(BaseHTTPRequestHandler):
    blobs: dict[str, bytes] = {}
    lies: dict[str, int] = {}  # path -> Content-Length announced instead of the real one

    def log_message(self, *_args):
        pass

    def _head(self) -> bytes | None:
        data = self.blobs.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(self.lies.get(self.path, len(data))))
        self.end_headers()
        return data

    def do_HEAD(self):
        self._head()

    def do_GET(self):
        data = self._head()
        if data is not None:
            self.wfile.write(data)
            self.close_connection = True


@pytest.fixture(scope="module")
def files():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", _Files
    srv.shutdown()
    srv.server_close()


def _tar(members: list[tuple[str, bytes, str, str]], mode: str = "w") -> bytes:
    """members: (name, tar type, data-or-linkname)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as t:
        for name, typ, extra in members:
            info = tarfile.TarInfo(name)
            info.type = typ
            data = None
            if typ == tarfile.REGTYPE:
                info.size = len(extra)
                data = io.BytesIO(extra)
            elif typ in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = extra
            t.addfile(info, data)
    return buf.getvalue()


def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
    return buf.getvalue()


R, D, S, H = tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE
GOOD = [(k, R, v) for k, v in _model_files().items()]


def _cve_2025_4517() -> list:
    """The shape of the CVE-2025-4517 proof of concept: directories with names near NAME_MAX and a chain of
    symlinks deep enough that os.path.realpath gives up, so tarfile's data filter passed it."""
    comp = "d" * 247
    members, path = [], ""
    for step in "abcdefghijklmnop":
        members += [(os.path.join(path, comp), D, b""), (os.path.join(path, step), S, comp)]
        path = os.path.join(path, comp)
    link = os.path.join(*"abcdefghijklmnop", "l" * 254)
    members += [(link, S, "../" * 16), ("escape", S, link + "/../../etc"), ("escape/evil", R, b"pwned")]
    return members


def _valid_tgz() -> bytes:
    return _tar([(f"mymodel/{n}", t, d) for n, t, d in GOOD], "w:gz")


ARCHIVE_CASES = [
    ("absolute member", "a.tar", lambda: _tar([*GOOD, ("/tmp/evil", R, b"x")]), r"'/tmp/evil' has an absolute path"),
    ("dot-dot member", "a.tar", lambda: _tar([*GOOD, ("a/../../evil", R, b"x")]), r"escapes the target with '\.\.'"),
    ("link to /etc", "a.tar", lambda: _tar([*GOOD, ("l", S, "/etc/passwd")]), r"'l' links outside"),
    ("link up", "a.tar", lambda: _tar([*GOOD, ("d/l", S, "../../x")]), r"'d/l' links outside"),
    (
        "short chain",
        "a.tar",
        lambda: _tar([*GOOD, ("a", S, "."), ("b", S, "a/.."), ("b/evil", R, b"pwned")]),
        r"lies below the symlink 'b'",
    ),
    ("chain to root", "a.tar", lambda: _tar([*GOOD, ("a", S, "."), ("b", S, "a/..")]), r"'a' links to the target dir"),
    ("cve-2025-4517", "a.tar", lambda: _tar(_cve_2025_4517()), r"lies below the symlink 'a'"),
    ("link loop", "a.tar", lambda: _tar([*GOOD, ("x", S, "y"), ("y", S, "x")]), r"symlink loop"),
    ("dangling link", "a.tar", lambda: _tar([*GOOD, ("x", S, "nowhere")]), r"which is not in the archive"),
    ("hard link up", "a.tar", lambda: _tar([*GOOD, ("h", H, "../outside/secret")]), r"'h' hard-links outside"),
    ("hard link absolute", "a.tar", lambda: _tar([*GOOD, ("h", H, "/etc/passwd")]), r"hard-links outside"),
    ("hard link later", "a.tar", lambda: _tar([("h", H, "config.json"), *GOOD]), r"not a regular file earlier"),
    ("device", "a.tar", lambda: _tar([*GOOD, ("null", tarfile.CHRTYPE, b"")]), r"'null' is a device"),
    ("block device", "a.tar", lambda: _tar([*GOOD, ("sda", tarfile.BLKTYPE, b"")]), r"'sda' is a device"),
    ("fifo", "a.tar", lambda: _tar([*GOOD, ("p", tarfile.FIFOTYPE, b"")]), r"device or fifo"),
    ("below a file", "a.tar", lambda: _tar([*GOOD, ("config.json/x", R, b"x")]), r"which is a file"),
    ("twice", "a.tar", lambda: _tar([*GOOD, ("config.json", R, b"again")]), r"appears twice"),
    ("control char", "a.tar", lambda: _tar([*GOOD, ("a\x1bb", R, b"x")]), r"control character"),
    (
        "zip slip",
        "a.zip",
        lambda: _zip([("config.json", b"{}", 0o100644), ("../../evil.txt", b"x", 0o100644)]),
        r"'\.\.'",
    ),
    ("zip absolute", "a.zip", lambda: _zip([("/etc/evil", b"x", 0o100644)]), r"absolute path"),
    ("zip symlink", "a.zip", lambda: _zip([("l", b"/etc/passwd", 0o120777)]), r"'l' is a symlink"),
    ("zip fifo", "a.zip", lambda: _zip([("p", b"", 0o010644)]), r"not a regular file"),
    ("zip backslash", "a.zip", lambda: _zip([("..\\..\\evil", b"x", 0o100644)]), r"backslash"),
    ("corrupt tgz", "a.tgz", lambda: os.urandom(4096), r"is not a readable tar\.gz archive"),
    ("truncated tgz", "a.tar.gz", lambda: _valid_tgz()[: len(_valid_tgz()) // 2], r"not a readable tar\.gz archive"),
    ("corrupt zip", "a.zip", lambda: b"PK\x03\x04" + os.urandom(2000), r"is not a readable zip archive"),
    ("corrupt tar", "a.tar", lambda: b"\x00" * 100 + os.urandom(3000), r"is not a readable tar archive"),
]
_ARCHIVE_FIX = r"fix or rebuild the archive|zip archives may hold only|check the url and the file it serves"


@pytest.mark.parametrize(("case", "fname", "make", "what"), ARCHIVE_CASES, ids=[c[0] for c in ARCHIVE_CASES])
def test_hostile_archive(bed, files, case, fname, make, what):
    url, handler = files
    path = f"/{abs(hash(case)) % 10**8}-{fname}"
    handler.blobs[path] = make()
    err = expect_refusal(bed, _url(bed, url=url + path), what, _ARCHIVE_FIX, failure_class="bad_archive", loose=True)
    assert "Traceback" not in str(err)
    assert not os.listdir(bed / "models" / ".gpufleet" / "staging")  # nothing half-written stays behind
    assert not Path("/tmp/evil").exists() and not (bed / "evil.txt").exists()


def test_archive_bomb_ratio(bed, files, monkeypatch):
    monkeypatch.setattr(archive, "RATIO_FLOOR", 1024 * 1024)
    url, handler = files
    handler.blobs["/bomb.zip"] = _zip(
        [*[(k, v, 0o100644) for k, v in _model_files().items()], ("z.bin", b"\0" * (4 << 20), 0o100644)]
    )
    expect_refusal(
        bed,
        _url(bed, url=url + "/bomb.zip"),
        r"expand to \d+ bytes, \d+x its own size",
        r"publish",
        "bad_archive",
        True,
    )


def test_archive_larger_than_the_free_space(bed, files, monkeypatch):
    """The space check counts what the members expand to, not the archive's size."""
    url, handler = files
    handler.blobs["/big.tar.gz"] = _tar([*GOOD, ("zeros.bin", R, b"\0" * (3 << 20))], "w:gz")
    monkeypatch.setattr(fs, "free_bytes", lambda _path: 2 << 20)
    expect_refusal(
        bed,
        _url(bed, url=url + "/big.tar.gz"),
        r"not enough disk space for the contents of big\.tar\.gz",
        r"Free some space",
        "disk_full",
        True,
    )


def test_short_body_is_refused_and_never_installed(bed, files):
    url, handler = files
    body = b"GGUF" + b"q" * 2000
    handler.blobs["/short.gguf"] = body[:1000]
    handler.lies["/short.gguf"] = len(body)
    params = _url(bed, name="short", url=url + "/short.gguf")
    before = snapshot(bed / "models" / "m")
    with pytest.raises(GpufleetError, match=r"ended early: got 1000 of the 2004 bytes .*run again to resume") as e:
        model_sync.sync(params)
    assert e.value.details["failure_class"] == "url_error"
    assert not (bed / "models" / "short").exists() and fs.read_manifest(str(bed / "models"), "short") is None
    assert snapshot(bed / "models" / "m") == before
    # the server is fixed: the next run resumes and installs the whole file
    handler.blobs["/short.gguf"] = body
    handler.lies.pop("/short.gguf")
    res = model_sync.sync(params)
    assert res["changed"] and res["path"] == str(bed / "models" / "short" / res["revision_id"])
    assert (bed / "models" / "short" / res["revision_id"] / "short.gguf").read_bytes() == body


def test_url_secrets_are_masked(bed, files):
    url, handler = files
    body = b"GGUF" + b"s" * 100
    handler.blobs["/s.gguf?X-Amz-Signature=SECRETSIG&X-Amz-Expires=60"] = body
    full = url.replace("http://", "http://user:PASSWORD@") + "/s.gguf?X-Amz-Signature=SECRETSIG&X-Amz-Expires=60"
    res = model_sync.sync(_url(bed, name="s", url=full))
    assert res["changed"] and "SECRETSIG" not in repr(res) and "PASSWORD" not in repr(res)
    assert res["url"].endswith("/s.gguf?***") and "***@" in res["url"]
    manifest_text = (bed / "models" / ".gpufleet" / "manifests" / "s.json").read_text()
    assert "SECRETSIG" not in manifest_text and "PASSWORD" not in manifest_text and "url_digest" in manifest_text
    assert model_sync.sync(_url(bed, name="s", url=full))["changed"] is False  # the digest keeps the no-op
    with pytest.raises(GpufleetError) as e:
        model_sync.sync(_url(bed, name="s2", url=full.replace("/s.gguf", "/missing.gguf")))
    assert "SECRETSIG" not in str(e.value) and "PASSWORD" not in str(e.value) and "HTTP 404" in str(e.value)


# ---------------------------------------------------------------- names that share a dotted prefix


def test_models_sharing_a_dotted_prefix_keep_their_own_staging_and_trash(bed):
    root = str(bed / "models")
    other = fs.staging_dir(root, "qwen2.5-7b", "0123456789abcdef")  # an in-progress download of qwen2.5-7b
    (Path(other) / "shard.part").write_bytes(b"partial")
    trash = Path(fs.meta_dir(root, "trash")) / "qwen2.5-7b.1.123"
    trash.mkdir()
    (trash / "config.json").write_text("{}")
    fs.staging_dir(root, "qwen2", "fedcba9876543210")  # qwen2's own staging: must not remove qwen2.5-7b's
    assert (Path(other) / "shard.part").exists()
    fs.recover(root, "qwen2")  # nothing of qwen2 in the trash: qwen2.5-7b's copy is not installed as qwen2
    assert not (bed / "models" / "qwen2").exists() and trash.exists()
    model_sync.sync(_local(bed, name="qwen2"))
    model_sync.sync({"name": "qwen2", "state": "absent", "models_root": root})
    assert (Path(other) / "shard.part").exists() and trash.exists()
    assert fs.is_staging_of("qwen2.local", "qwen2") and not fs.is_staging_of("qwen2.5-7b.local", "qwen2")
    assert fs.is_trash_of("qwen2.5-7b.1.123", "qwen2.5-7b") and not fs.is_trash_of("qwen2.5-7b.1.123", "qwen2")
