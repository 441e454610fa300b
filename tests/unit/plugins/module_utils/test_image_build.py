"""Derived images: requirement validation, plugin files, the content hash and tag, the build context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._image import build as ib

BASE_ID = "sha256:" + "1" * 64


def test_requirements_are_normalized_deduplicated_sorted():
    got = ib.parse_requirements(["Zpkg>=1,<2", "apkg[extra]==1.0", "apkg[extra] == 1.0", 'x ; python_version>"3"'])
    assert got == sorted(got)
    assert "apkg[extra]==1.0" in got and len(got) == 3


@pytest.mark.parametrize(
    "entry",
    ["bad pkg ==", "--index-url=http://x", "-e .", "pkg==1 # comment", "./local/dir", "pkg==1\nother", "", "pkg>>1"],
)
def test_non_requirements_are_refused_by_name(entry):
    with pytest.raises(GpufleetError) as e:
        ib.parse_requirements(["fine==1", entry])
    assert repr(entry) in str(e.value) and "'fine==1'" not in str(e.value)
    assert e.value.details["failure_class"] == "bad_package"
    assert e.value.details["offending"] == [entry]


def test_every_offending_entry_is_named():
    with pytest.raises(GpufleetError) as e:
        ib.parse_requirements(["a b", "ok", "c d"])
    assert "'a b'" in str(e.value) and "'c d'" in str(e.value)


def test_url_requirement_is_accepted():
    (got,) = ib.parse_requirements(["pkg @ https://example.com/pkg-1.0-py3-none-any.whl"])
    assert got.startswith("pkg") and got.endswith("@ https://example.com/pkg-1.0-py3-none-any.whl")


def test_plugin_files_checked_and_hashed(tmp_path: Path):
    a = tmp_path / "a.py"
    a.write_text("x = 1\n")
    w = tmp_path / "w-1.0-py3-none-any.whl"
    w.write_bytes(b"PK")
    files = ib.plugin_files([str(w), str(a)])
    assert [f.name for f in files] == ["a.py", "w-1.0-py3-none-any.whl"]
    assert files[0].sha256 != files[1].sha256 and not files[0].is_wheel and files[1].is_wheel


def test_plugin_problems_named(tmp_path: Path):
    (tmp_path / "x.txt").write_text("")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.py").write_text("")
    (tmp_path / "a.py").write_text("")
    with pytest.raises(GpufleetError) as e:
        ib.plugin_files(
            [str(tmp_path / "x.txt"), str(tmp_path / "nope.whl"), str(tmp_path / "a.py"), str(tmp_path / "d" / "a.py")]
        )
    msg = str(e.value)
    assert "x.txt: not a .py or .whl file" in msg
    assert "nope.whl: no such file on the target" in msg
    assert "same file name as" in msg


def _spec(tmp_path: Path, packages=("p==1",), plugin_text="x = 1\n") -> ib.DerivedSpec:
    f = tmp_path / "plug.py"
    f.write_text(plugin_text)
    return ib.DerivedSpec(packages=list(packages), plugins=ib.plugin_files([str(f)]))


def test_hash_is_deterministic_and_covers_every_input(tmp_path: Path):
    h = _spec(tmp_path).content_hash(BASE_ID)
    assert _spec(tmp_path).content_hash(BASE_ID) == h
    assert _spec(tmp_path).content_hash("sha256:" + "2" * 64) != h
    assert _spec(tmp_path, packages=("p==2",)).content_hash(BASE_ID) != h
    assert _spec(tmp_path, plugin_text="x = 2\n").content_hash(BASE_ID) != h
    s = _spec(tmp_path)
    s.no_index = True
    assert s.content_hash(BASE_ID) != h
    # Order of packages does not matter (they are sorted).
    assert ib.DerivedSpec(packages=["a", "b"]).content_hash(BASE_ID) == ib.DerivedSpec(
        packages=["b", "a"]
    ).content_hash(BASE_ID)


def test_find_links_content_is_hashed(tmp_path: Path):
    d = tmp_path / "idx"
    d.mkdir()
    (d / "a-1.whl").write_bytes(b"1")
    s1 = ib.DerivedSpec(packages=["a"], find_links=ib.find_links_files([str(d)]), find_links_count=1)
    (d / "a-1.whl").write_bytes(b"2")
    s2 = ib.DerivedSpec(packages=["a"], find_links=ib.find_links_files([str(d)]), find_links_count=1)
    assert s1.content_hash(BASE_ID) != s2.content_hash(BASE_ID)
    with pytest.raises(GpufleetError, match="no such directory"):
        ib.find_links_files([str(tmp_path / "missing")])


def test_derived_tag():
    assert ib.derived_tag("gpufleet/vllm-openai", "v0.10.2", "ab" * 32) == "gpufleet/vllm-openai:v0.10.2-" + "ab" * 8
    assert ib.derived_tag("r", None, "cd" * 32) == "r:image-" + "cd" * 8


def test_context_dockerfile_and_requirements(tmp_path: Path):
    whl = tmp_path / "w-1.0-py3-none-any.whl"
    whl.write_bytes(b"PK")
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "p-1.whl").write_bytes(b"w")
    spec = ib.DerivedSpec(
        packages=["p==1"],
        plugins=ib.plugin_files([str(whl)]),
        find_links=ib.find_links_files([str(idx)]),
        find_links_count=1,
        no_index=True,
    )
    labels = ib.labels("vllm/vllm-openai:v0.10.2", BASE_ID, "v0.10.2", spec, "f" * 64)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ib.write_context(str(ctx), "vllm/vllm-openai:v0.10.2", spec, labels, [str(idx)])
    df = (ctx / "Dockerfile").read_text()
    assert df.startswith("FROM vllm/vllm-openai:v0.10.2\n")
    assert "RUN sh /opt/gpufleet/install.sh" in df
    assert "python3 -m pip install -r /opt/gpufleet/requirements.txt" in (ctx / "gpufleet" / "install.sh").read_text()
    assert 'gpufleet.image.packages="[\\"p==1\\"]"' in df
    req = (ctx / "gpufleet" / "requirements.txt").read_text().splitlines()
    assert "--no-index" in req and "--find-links /opt/gpufleet/find-links/0" in req
    assert "/opt/gpufleet/plugins/w-1.0-py3-none-any.whl" in req and "p==1" in req
    assert (ctx / "gpufleet" / "plugins" / whl.name).read_bytes() == b"PK"
    assert (ctx / "gpufleet" / "find-links" / "0" / "p-1.whl").exists()
    assert json.loads(labels["gpufleet.image.packages"]) == ["p==1"]


def test_py_only_plugins_skip_pip(tmp_path: Path):
    spec = _spec(tmp_path, packages=())
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    ib.write_context(str(ctx), "b:1", spec, ib.labels("b:1", BASE_ID, "1", spec, "0" * 64), [])
    script = (ctx / "gpufleet" / "install.sh").read_text()
    assert "pip install" not in script and "gpufleet-plugins.pth" in script
