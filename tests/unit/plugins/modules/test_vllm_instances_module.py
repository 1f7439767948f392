"""The vllm_instances module over a fake systemctl, environment files and /proc."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.gpufleet.serving.plugins.modules import vllm_instances
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import patch_module_args

SHOWS = {
    "vllm@0.service": "ActiveState=active\nSubState=running\nMainPID=11\nNRestarts=0\nResult=success\n",
    "vllm@1.service": "ActiveState=active\nSubState=running\nMainPID=12\nNRestarts=0\nResult=success\n",
    "vllm@main.service": "ActiveState=failed\nSubState=failed\nMainPID=0\nNRestarts=4\nResult=start-limit-hit\n",
}
PROC = {11: b"GPUFLEET_PORT=8001\0A=1\0", 12: b"GPUFLEET_PORT=8002\0A=0\0"}


@pytest.fixture
def host(tmp_path, monkeypatch):
    for name, port in (("0", 8001), ("1", 8002), ("main", 8001)):
        (tmp_path / ("%s.env" % name)).write_text("GPUFLEET_PORT=%d\nA=1\n" % port)
    (tmp_path / "plan.json").write_text("{}")
    calls = []

    def run_command(self, args, **kwargs):
        calls.append(args)
        return 0, SHOWS[args[2]], ""

    real_read = vllm_instances.read

    def read(path, mode="r"):
        if path.startswith("/proc/"):
            return PROC.get(int(path.split("/")[2]))
        return real_read(path, mode)

    monkeypatch.setattr(AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(AnsibleModule, "get_bin_path", lambda self, name, required=False: "/bin/" + name)
    monkeypatch.setattr(vllm_instances, "read", read)
    return tmp_path, calls


def run(capsys, args):
    with patch_module_args(args), pytest.raises(SystemExit):
        vllm_instances.main()
    return json.loads(capsys.readouterr().out)


def test_every_configured_instance_by_default(host, capsys):
    config_dir, calls = host
    result = run(capsys, {"config_dir": str(config_dir)})
    assert result["changed"] is False
    assert [i["name"] for i in result["instances"]] == ["0", "1", "main"]
    assert result["stale"] == ["1"]
    assert result["inactive"] == ["main"] and result["failed"] == ["main"]
    assert result["instances"][1]["stale_keys"] == ["A"]
    assert calls[0][:3] == ["/bin/systemctl", "show", "vllm@0.service"]


def test_named_instances_with_unreachable_metrics(host, capsys):
    config_dir, _calls = host
    result = run(capsys, {"config_dir": str(config_dir), "names": ["0"], "metrics": True, "metrics_timeout": 0.2})
    (only,) = result["instances"]
    assert only["port"] == 8001
    assert only["requests_running"] is None and result["busy"] == 0
