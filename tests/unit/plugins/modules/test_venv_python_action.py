"""The action of python_package_info and hf_snapshot runs the module with the Python its python option names.

An extra variable ansible_python_interpreter (as tests/fleet/fleet.sh passes)
outranks task variables, so the interpreter is set by the action plugin.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import python_package
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError
from ansible_collections.gpufleet.serving.plugins.plugin_utils.venv_python import interpreter_vars

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def test_the_interpreter_is_set_on_a_copy_of_the_task_variables():
    task_vars = {"ansible_python_interpreter": "/usr/bin/python3", "x": 1}
    out = interpreter_vars(task_vars, "/opt/vllm/venv/bin/python")
    assert out == {"ansible_python_interpreter": "/opt/vllm/venv/bin/python", "x": 1}
    assert task_vars["ansible_python_interpreter"] == "/usr/bin/python3"


def test_without_python_the_task_variables_are_left_as_they_are():
    task_vars = {"x": 1}
    assert interpreter_vars(task_vars, None) is task_vars


@pytest.mark.parametrize("python", ["python3", "../venv/bin/python", "/opt/venv/bin/../python", "/opt/v env/bin/python", "/opt/venv/bin/python\n", 3])
def test_a_python_that_is_not_a_plain_absolute_path_is_refused(python):
    with pytest.raises(ValueError, match="python"):
        interpreter_vars({}, python)


def test_the_module_refuses_to_answer_for_another_interpreter():
    python_package.check_interpreter(None)
    python_package.check_interpreter(os.path.abspath(sys.executable))
    with pytest.raises(InputError, match="python: the module runs under"):
        python_package.check_interpreter("/opt/vllm/venv/bin/python")


def test_an_extra_variable_does_not_override_the_python_option(tmp_path):
    """ansible ad hoc, -e ansible_python_interpreter=<another python>: the module still runs under its python option."""
    venv_python = os.path.join(ROOT, ".venv", "bin", "python")
    if not os.path.exists(venv_python):
        venv_python = sys.executable
    env = dict(
        os.environ,
        ANSIBLE_COLLECTIONS_PATH=os.path.join(ROOT, "collections"),
        ANSIBLE_LOCALHOST_WARNING="false",
        ANSIBLE_NOCOLOR="1",
    )
    args = {"name": "ansible-core", "python": venv_python}
    run = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ansible"),
            "localhost",
            "-e",
            "ansible_python_interpreter=/nonexistent/python3",
            "-o",
            "-m",
            "gpufleet.serving.python_package_info",
            "-a",
            json.dumps(args),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    line = [text for text in run.stdout.splitlines() if text.startswith("localhost | SUCCESS => ")]
    assert line, run.stdout
    result = json.loads(line[0].split(" => ", 1)[1])
    assert result["python"] == venv_python
    assert result["installed"] is True
