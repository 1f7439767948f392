"""The local fleet: real Debian 12 hosts with systemd as PID 1."""

import pytest

# testinfra talks to the containers directly (far faster than through Ansible).
testinfra_hosts = ["podman://t-gpu1", "podman://t-gpu2"]

PEERS = {"t-gpu1": "t-gpu2", "t-gpu2": "t-gpu1"}


def test_systemd_is_pid1_and_running(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"
    state = host.run("systemctl is-system-running").stdout.strip()
    assert state in ("running", "degraded"), state
    assert host.run("systemctl --failed --no-legend").stdout.strip() == ""


def test_debian_12(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.startswith("12")


def test_converge_marker(host):
    marker = host.file("/etc/gpufleet-fleet")
    assert marker.mode == 0o644
    assert "host=%s" % host.backend.get_hostname() in marker.content_string
    assert host.package("iputils-ping").is_installed


@pytest.mark.parametrize("unit", ["dbus.service", "systemd-journald.service"])
def test_core_units_active(host, unit):
    assert host.service(unit).is_running


def test_peer_reachable_by_name(host):
    peer = PEERS[host.backend.get_hostname()]
    assert host.run("getent hosts %s", peer).rc == 0
    ping = host.run("ping -c 1 -W 2 %s", peer)
    assert ping.rc == 0, ping.stderr
