"""hf_snapshot: inputs that must not reach the hub client or the disk, the stamp, and the download with a fake client."""

from __future__ import annotations

import os

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import hf_snapshot
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError


def params(**changes):
    out = {
        "repo_id": "Qwen/Qwen2.5-0.5B-Instruct",
        "revision": "main",
        "dest": "/var/lib/vllm/models/Qwen2.5-0.5B-Instruct",
        "patterns": None,
        "stamp": ".gpufleet-complete",
        "timeout": 21600,
    }
    out.update(changes)
    return out


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"repo_id": "gpt2"},
        {"revision": "0123456789abcdef0123456789abcdef01234567"},
        {"revision": "refs/pr/12"},
        {"revision": "v1.0_rc.2"},
        {"patterns": ["*.json", "*.safetensors", "tokenizer.model"]},
        {"patterns": []},
        {"stamp": ".gpufleet-0123456789abcdef0123456789abcdef01234567"},
        {"dest": "/srv/.models/m"},
        {"timeout": 1},
    ],
)
def test_good_inputs_pass(changes):
    hf_snapshot.check_inputs(params(**changes))


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"repo_id": "../../etc"}, "repo_id"),
        ({"repo_id": "a/b/c"}, "repo_id"),
        ({"repo_id": "-rf"}, "repo_id"),
        ({"repo_id": "org/na--me"}, "repo_id"),
        ({"repo_id": "org/name\n"}, "repo_id"),
        ({"repo_id": "x" * 200}, "repo_id"),
        ({"revision": "--upload-pack=x"}, "revision"),
        ({"revision": "main/../../x"}, "revision"),
        ({"revision": "main "}, "revision"),
        ({"revision": "refs//pr"}, "revision"),
        ({"revision": ""}, "revision"),
        ({"dest": "models/m"}, "dest"),
        ({"dest": "/"}, "dest"),
        ({"dest": "/models"}, "dest"),
        ({"dest": "/srv/models/../../etc"}, "dest"),
        ({"dest": "/srv/models/m/"}, "dest"),
        ({"dest": "/srv//m"}, "dest"),
        ({"dest": "/srv/models/m x"}, "dest"),
        ({"dest": "/srv/models/m\n"}, "dest"),
        ({"stamp": "../x"}, "stamp"),
        ({"stamp": "a/b"}, "stamp"),
        ({"stamp": ".."}, "stamp"),
        ({"stamp": ""}, "stamp"),
        ({"patterns": ["*.json"] * 300}, "patterns"),
        ({"patterns": [""]}, "patterns"),
        ({"patterns": ["*.json\n"]}, "patterns"),
        ({"patterns": ["x" * 300]}, "patterns"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
    ],
)
def test_bad_inputs_are_refused_by_name(changes, option):
    with pytest.raises(InputError, match=option):
        hf_snapshot.check_inputs(params(**changes))


def test_no_stamp_means_not_done(tmp_path):
    assert hf_snapshot.stamp_state(str(tmp_path / "m"), ".gpufleet-complete") is False
    (tmp_path / "m").mkdir()
    assert hf_snapshot.stamp_state(str(tmp_path / "m"), ".gpufleet-complete") is False


def test_a_stamp_means_done(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / ".gpufleet-complete").write_text("a/b@main\n")
    assert hf_snapshot.stamp_state(str(tmp_path / "m"), ".gpufleet-complete") is True


def test_a_missing_parent_is_refused_except_in_check_mode(tmp_path):
    dest = str(tmp_path / "none" / "m")
    with pytest.raises(InputError, match=r"dest .*parent directory"):
        hf_snapshot.stamp_state(dest, ".s")
    assert hf_snapshot.stamp_state(dest, ".s", check_mode=True) is False


def test_a_dest_that_is_a_file_or_a_link_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match=r"dest .*not a directory"):
        hf_snapshot.stamp_state(str(tmp_path / "file"), ".s")
    (tmp_path / "real").mkdir()
    os.symlink(str(tmp_path / "real"), str(tmp_path / "link"))
    with pytest.raises(InputError, match=r"dest .*link"):
        hf_snapshot.stamp_state(str(tmp_path / "link"), ".s")


def test_a_stamp_that_is_not_a_regular_file_is_refused(tmp_path):
    (tmp_path / "m").mkdir()
    os.symlink("/etc/passwd", str(tmp_path / "m" / ".s"))
    with pytest.raises(InputError, match=r"stamp .*not a regular file"):
        hf_snapshot.stamp_state(str(tmp_path / "m"), ".s")


def test_download_passes_the_inputs_and_writes_the_stamp_after(tmp_path):
    calls = []
    dest = str(tmp_path / "m")

    def fake_snapshot_download(**kwargs):
        assert not os.path.exists(os.path.join(dest, ".gpufleet-abc"))
        os.makedirs(kwargs["local_dir"], exist_ok=True)
        calls.append(kwargs)

    text = hf_snapshot.download(fake_snapshot_download, params(dest=dest, revision="abc", patterns=["*.json"], stamp=".gpufleet-abc"))
    assert calls == [{"repo_id": "Qwen/Qwen2.5-0.5B-Instruct", "revision": "abc", "local_dir": dest, "allow_patterns": ["*.json"]}]
    assert text == "Qwen/Qwen2.5-0.5B-Instruct@abc\n"
    assert (tmp_path / "m" / ".gpufleet-abc").read_text() == text
    assert oct((tmp_path / "m" / ".gpufleet-abc").stat().st_mode & 0o777) == oct(0o644 & ~_umask())


def test_a_failed_download_writes_no_stamp(tmp_path):
    def failing(**kwargs):
        os.makedirs(kwargs["local_dir"], exist_ok=True)
        raise OSError("connection reset")

    with pytest.raises(OSError):
        hf_snapshot.download(failing, params(dest=str(tmp_path / "m")))
    assert not (tmp_path / "m" / ".gpufleet-complete").exists()


def test_the_stamp_is_not_written_through_a_link(tmp_path):
    (tmp_path / "m").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("keep")
    os.symlink(str(target), str(tmp_path / "m" / ".gpufleet-complete"))
    with pytest.raises(OSError):
        hf_snapshot.write_stamp(str(tmp_path / "m"), ".gpufleet-complete", "x")
    assert target.read_text() == "keep"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
