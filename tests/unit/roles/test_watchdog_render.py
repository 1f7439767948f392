"""The watchdog role's files, rendered from its own defaults and vars: the unit (systemd-analyze verify), the
configuration (as the daemon checks it), and the launcher run with the host's Python over the installed files.

The role reads no distribution fact and installs no package, so these renders are what a Debian 12 or Ubuntu
22.04/24.04 host gets (roles/watchdog/meta/main.yml).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.plugins.module_utils import fence_watchdog
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import import_controller_plugin, load_trusted, trust_as_template

watchdog_config = import_controller_plugin("ansible_collections.gpufleet.serving.plugins.filter.watchdog_config").watchdog_config
AnsibleFilterError = import_controller_plugin("ansible.errors").AnsibleFilterError

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "watchdog"
LOADER = DataLoader()
HOST_PYTHON = "/usr/bin/python3"
PLAN = {"launch": {"served_model_name": "tiny"}, "instances": [{"name": "0", "port": 8001, "gpus": [0]}, {"name": "1", "port": 8002, "gpus": [1]}]}


def variables(**overrides):
    out = dict(load_trusted(LOADER, str(ROLE / "defaults" / "main.yml")))
    out.update(load_trusted(LOADER, str(ROLE / "vars" / "main.yml")))
    out.update(ansible_managed="Ansible managed", **overrides)
    return out


def render(name, **overrides):
    text = (ROLE / "templates" / name).read_text()
    return Templar(loader=LOADER, variables=variables(**overrides)).template(trust_as_template(text))


def settings(**overrides):
    return Templar(loader=LOADER, variables=variables(**overrides)).template(trust_as_template("{{ _watchdog_settings }}"))


def values(unit, key):
    return [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith(key + "=")]


def test_settings_reach_the_daemon_typed():
    config = watchdog_config(PLAN, settings(watchdog_probe_timeout=2.5, watchdog_failures=4))
    assert (config["interval"], config["probe_timeout"], config["failures"], config["ready_successes"]) == (5, 2.5, 4, 2)
    assert config["nginx_dir"] == "/etc/nginx/gpufleet" and config["validator"] == "/usr/local/libexec/gpufleet-nginx-validate"
    assert config["state_dir"] == "/var/lib/gpufleet-watchdog" and config["key_file"] == "/etc/vllm/instance-api-key"
    assert [(i["name"], i["port"], i["unit"], i["served_model_name"]) for i in config["instances"]] == [
        ("0", 8001, "vllm@0.service", "tiny"),
        ("1", 8002, "vllm@1.service", "tiny"),
    ]


def test_config_file_is_what_the_daemon_accepts():
    config = watchdog_config({}, settings(), json.dumps(PLAN))
    text = render("watchdog.json.j2", _watchdog_config=config)
    assert fence_watchdog.check_config(json.loads(text)) == config


def test_the_roles_keep_the_same_files():
    """The paths the watchdog is given are the ones the vllm, gateway and nginx_common roles write."""
    ours = variables()
    vllm = yaml.safe_load((ROOT / "roles/vllm/vars/main.yml").read_text())
    vllm_defaults = yaml.safe_load((ROOT / "roles/vllm/defaults/main.yml").read_text())
    gateway = yaml.safe_load((ROOT / "roles/gateway/vars/main.yml").read_text())
    assert vllm["_vllm_api_key_file"] == "{{ vllm_config_dir }}/instance-api-key"
    assert ours["watchdog_instance_key_file"] == vllm_defaults["vllm_config_dir"] + "/instance-api-key"
    assert ours["watchdog_plan_path"] == vllm_defaults["vllm_config_dir"] + "/plan.json"
    assert gateway["_gateway_conf_dir"] == ours["_watchdog_nginx_dir"]
    assert gateway["_gateway_validate"] == ours["_watchdog_validator"]
    assert fence_watchdog.DEFAULT_PATHS["nginx_dir"] == ours["_watchdog_nginx_dir"]


@pytest.mark.parametrize(
    ("plan", "plan_file", "words"),
    [
        ({}, None, "there is no plan for this host"),
        ({}, "{", "the plan file is not JSON"),
        ({"launch": {"served_model_name": "tiny"}, "instances": [{"name": "0;x", "port": 8001}]}, None, r"instances\[0\].name"),
        ({"instances": []}, None, "the plan must be a plan"),
    ],
)
def test_the_filter_names_what_to_change(plan, plan_file, words):
    with pytest.raises(AnsibleFilterError, match=words):
        watchdog_config(plan, settings(), plan_file)


def test_the_unit_runs_the_launcher_hardened():
    unit = render("gpufleet-watchdog.service.j2")
    assert values(unit, "ExecStart") == ["/usr/bin/python3 -I -s /usr/local/lib/gpufleet-watchdog/gpufleet-watchdog --config /etc/gpufleet/watchdog.json"]
    assert values(unit, "Restart") == ["always"]
    assert values(unit, "ReadWritePaths") == ["-/etc/nginx/gpufleet -/var/lib/prometheus/node-exporter /var/lib/gpufleet-watchdog -/var/log/nginx /run"]
    for key, value in [
        ("ProtectSystem", "strict"),
        ("PrivateTmp", "yes"),
        ("ProtectHome", "yes"),
        ("NoNewPrivileges", "yes"),
        ("IPAddressDeny", "any"),
        ("IPAddressAllow", "localhost"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
        ("SystemCallFilter", "@system-service"),
        ("CapabilityBoundingSet", "CAP_DAC_OVERRIDE CAP_CHOWN"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
    ]:
        assert values(unit, key) == [value], key
    assert "{{" not in unit and "{%" not in unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    (tmp_path / "gpufleet-watchdog.service").write_text(render("gpufleet-watchdog.service.j2"))
    env = {"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "gpufleet-watchdog.service")],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env=env,
    )
    assert out.returncode == 0 and out.stderr.strip() == "", out.stderr


@pytest.fixture
def installed(tmp_path):
    """The role's install on a scratch root: its module_utils files in the collection layout and the launcher."""
    lib = tmp_path / "lib"
    target = lib / "ansible_collections" / "gpufleet" / "serving" / "plugins" / "module_utils"
    target.mkdir(parents=True)
    for name in variables()["_watchdog_module_utils"]:
        shutil.copy(ROOT / "plugins" / "module_utils" / name, target / name)
    launcher = tmp_path / "gpufleet-watchdog"
    launcher.write_text(render("gpufleet-watchdog.j2", _watchdog_lib_dir=str(lib)))
    launcher.chmod(0o644)  # as the role installs it: run by the Python named, never executed directly
    return launcher


def test_the_launcher_is_run_by_python_not_executed():
    """No shebang and mode 0644: the unit and the configuration's validate both name the Python that runs it."""
    launcher = render("gpufleet-watchdog.j2")
    assert not launcher.startswith("#!")
    assert "{{" not in launcher and "{%" not in launcher
    tasks = yaml.safe_load((ROLE / "tasks" / "install.yml").read_text())
    install = next(t["ansible.builtin.template"] for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "gpufleet-watchdog.j2")
    assert install["dest"] == "{{ _watchdog_launcher }}" and install["mode"] == "0644"
    validate = next(t["ansible.builtin.template"]["validate"] for t in tasks if t.get("ansible.builtin.template", {}).get("src") == "watchdog.json.j2")
    assert validate.startswith("{{ _watchdog_python }} -I -s {{ _watchdog_launcher }} ")
    unit = (ROLE / "templates" / "gpufleet-watchdog.service.j2").read_text()
    assert values(unit, "ExecStart") == ["{{ _watchdog_python }} -I -s {{ _watchdog_launcher }} --config {{ _watchdog_config_file }}"]


@pytest.mark.skipif(not Path(HOST_PYTHON).exists(), reason="no /usr/bin/python3 here")
def test_the_launcher_runs_with_the_installed_files_only(tmp_path, installed):
    """The host's Python, isolated (-I -s, as the unit runs it), with nothing but the files the role installs."""
    good = tmp_path / "watchdog.json"
    good.write_text(json.dumps(watchdog_config(PLAN, settings())))
    out = subprocess.run([HOST_PYTHON, "-I", "-s", str(installed), "--check", "--config", str(good)], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(dict(watchdog_config(PLAN, settings()), interval=0)))
    out = subprocess.run([HOST_PYTHON, "-I", "-s", str(installed), "--check", "--config", str(bad)], capture_output=True, text=True, check=False, timeout=60)
    assert out.returncode == 2 and out.stderr.startswith("gpufleet-watchdog: %s: interval must be a number from 1 to 3600" % bad), out.stderr
    assert "Traceback" not in out.stderr
    # gateway_layout, which the watchdog imports when it first fences, is there too.
    lib = installed.parent / "lib"
    probe = "import sys; sys.path.insert(0, %r); from ansible_collections.gpufleet.serving.plugins.module_utils import gateway_layout; print('ok')" % str(lib)
    out = subprocess.run([HOST_PYTHON, "-I", "-s", "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
