"""python_package_info, hf_snapshot and resolve_names as Ansible calls them (main() with module arguments)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import python_package
from ansible_collections.gpufleet.serving.plugins.modules import hf_snapshot, python_package_info, resolve_names
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args


def run(capsys, module, args, check_mode=False):
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    with patch_module_args(args), pytest.raises(SystemExit):
        module.main()
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    package = tmp_path / "fakevllm"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("import sys\nprint('INFO noisy import')\n__version__ = '1.2.3'\n")
    (package / "engine" / "arg_utils.py").write_text('p.add_argument("--shutdown-timeout")\n')
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("raise ImportError('libnuma.so.1: cannot open shared object file')\n")
    (tmp_path / "hangpkg").mkdir()
    (tmp_path / "hangpkg" / "__init__.py").write_text("import time\ntime.sleep(60)\n")
    dist = tmp_path / "fake_vllm-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-vllm\nVersion: 1.2.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    real_check = python_package.import_check
    monkeypatch.setattr(python_package, "import_check", lambda name, timeout: real_check(name, timeout, env={"PYTHONPATH": str(tmp_path)}))
    return package


# --- python_package_info -----------------------------------------------------------------------------------


def test_version_only(capsys, fake_vllm):
    result = run(capsys, python_package_info, {"name": "fake-vllm"})
    assert result["changed"] is False and result["installed"] is True and result["version"] == "1.2.3"
    assert result["location"] is None and result["flags"] == {} and "module_version" not in result
    assert result["python"] == sys.executable


def test_not_installed_is_no_failure(capsys):
    result = run(capsys, python_package_info, {"name": "gpufleet-not-installed"})
    assert result.get("failed") is not True and result["installed"] is False and result["version"] is None


def test_flags_without_importing(capsys, fake_vllm):
    result = run(
        capsys,
        python_package_info,
        {"name": "fake-vllm", "module": "fakevllm", "flags": ["--shutdown-timeout", "--drain"], "flags_source": "engine/arg_utils.py"},
    )
    assert result["flags"] == {"--shutdown-timeout": True, "--drain": False}
    assert result["location"] == str(fake_vllm)
    assert "fakevllm" not in sys.modules


def test_flags_of_a_package_that_is_not_there_are_false(capsys):
    result = run(
        capsys, python_package_info, {"name": "vllm", "module": "gpufleet_no_vllm", "flags": ["--shutdown-timeout"], "flags_source": "engine/arg_utils.py"}
    )
    assert result.get("failed") is not True and result["flags"] == {"--shutdown-timeout": False}


def test_import_in_a_fresh_interpreter_keeps_the_output_one_json_object(capsys, fake_vllm):
    result = run(capsys, python_package_info, {"name": "fake-vllm", "module": "fakevllm", "try_import": True})
    assert result["module_version"] == "1.2.3"
    assert "fakevllm" not in sys.modules


def test_a_package_that_does_not_import_fails_with_the_reason(capsys, fake_vllm):
    result = run(capsys, python_package_info, {"name": "fake-vllm", "module": "brokenpkg", "try_import": True})
    assert result["failed"] is True
    assert "brokenpkg does not import" in result["msg"] and "libnuma" in result["msg"]
    assert result["version"] == "1.2.3"


def test_an_import_that_hangs_is_stopped(capsys, fake_vllm):
    result = run(capsys, python_package_info, {"name": "fake-vllm", "module": "hangpkg", "try_import": True, "import_timeout": 0.5})
    assert result["failed"] is True and "did not finish within 0.5 seconds" in result["msg"]


def test_python_package_info_refuses_bad_input_by_name(capsys):
    result = run(capsys, python_package_info, {"name": "vllm", "module": "vllm", "flags": ["--x"], "flags_source": "../x.py"})
    assert result["failed"] is True and "flags_source" in result["msg"]


# --- hf_snapshot ---------------------------------------------------------------------------------------------


@pytest.fixture
def hub(monkeypatch):
    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        os.makedirs(kwargs["local_dir"], exist_ok=True)
        with open(os.path.join(kwargs["local_dir"], "config.json"), "w") as handle:
            handle.write("{}")
        if kwargs["repo_id"] == "org/fails":
            raise OSError("401 Client Error: Unauthorized")

    monkeypatch.setattr(hf_snapshot, "snapshot_download", fake_snapshot_download)
    return calls


def test_download_once_then_nothing(capsys, hub, tmp_path):
    args = {"repo_id": "org/model", "revision": "abc", "dest": str(tmp_path / "m"), "patterns": ["*.json"]}
    result = run(capsys, hf_snapshot, args)
    assert result["changed"] is True and result["stamp"] == str(tmp_path / "m" / ".gpufleet-complete")
    assert (tmp_path / "m" / ".gpufleet-complete").read_text() == "org/model@abc\n"
    assert (tmp_path / "m" / "config.json").exists()
    again = run(capsys, hf_snapshot, args)
    assert again["changed"] is False
    # the download ran in a child process: the parent's fake saw no call
    assert hub == []


def test_check_mode_downloads_nothing(capsys, hub, tmp_path):
    result = run(capsys, hf_snapshot, {"repo_id": "org/model", "dest": str(tmp_path / "m")}, check_mode=True)
    assert result["changed"] is True and not (tmp_path / "m").exists()
    result = run(capsys, hf_snapshot, {"repo_id": "org/model", "dest": str(tmp_path / "none" / "m")}, check_mode=True)
    assert result["changed"] is True


def test_a_failed_download_fails_and_leaves_no_stamp(capsys, hub, tmp_path):
    result = run(capsys, hf_snapshot, {"repo_id": "org/fails", "dest": str(tmp_path / "m"), "stamp": ".gpufleet-x"})
    assert result["failed"] is True and "org/fails@main" in result["msg"] and "Unauthorized" in result["msg"]
    assert not (tmp_path / "m" / ".gpufleet-x").exists()


def test_without_the_hub_client_the_message_names_it(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(hf_snapshot, "snapshot_download", None)
    result = run(capsys, hf_snapshot, {"repo_id": "org/model", "dest": str(tmp_path / "m")})
    assert result["failed"] is True and "huggingface_hub" in result["msg"] and "Traceback" not in json.dumps(result)


def test_hf_snapshot_refuses_bad_input_before_touching_anything(capsys, hub, tmp_path):
    result = run(capsys, hf_snapshot, {"repo_id": "org/model", "dest": str(tmp_path / "m") + "/../../etc"})
    assert result["failed"] is True and "dest" in result["msg"]
    assert os.listdir(str(tmp_path)) == []


# --- resolve_names -------------------------------------------------------------------------------------------


def test_resolve_names_returns_what_the_gateway_reads(capsys, monkeypatch):
    def fake(name, port, type=0):
        if name == "gone":
            raise OSError("no such name")
        return [(2, 1, 6, "", ("10.0.0.%d" % len(name), 0))]

    monkeypatch.setattr(resolve_names.name_resolution.socket, "getaddrinfo", fake)
    result = run(capsys, resolve_names, {"names": ["gpu1", "gone", "gw"]})
    assert result["changed"] is False
    assert result["addresses"] == {"gpu1": ["10.0.0.4"], "gone": [], "gw": ["10.0.0.2"]}
    assert result["unresolved"] == ["gone"] and result["timed_out"] == []


def test_resolve_names_with_the_real_resolver(capsys):
    result = run(capsys, resolve_names, {"names": ["127.0.0.1", "localhost", "gpufleet-none.invalid"], "timeout": 5})
    assert result["addresses"]["127.0.0.1"] == ["127.0.0.1"]
    assert result["addresses"]["localhost"]
    assert result["unresolved"] == ["gpufleet-none.invalid"]


def test_resolve_names_refuses_a_name_with_a_space(capsys):
    result = run(capsys, resolve_names, {"names": ["gpu 1"]})
    assert result["failed"] is True and "names" in result["msg"] and "'gpu 1'" in result["msg"]
