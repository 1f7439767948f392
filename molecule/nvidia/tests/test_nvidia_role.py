"""The nvidia role on a host without a GPU, installing from the stand-in repository."""

import pytest

testinfra_hosts = ["podman://t-nv-host"]

REPO_URI = "http://t-nv-repo:8080/debian12/x86_64/"
KEYRING = "/etc/apt/keyrings/gpufleet-nvidia-cuda.asc"
# What the role installs for branch 580, open modules, compute profile, CUDA 12.8.0.
EXPECTED = {
    "nvidia-driver-cuda": "580.95.05-1",
    "nvidia-kernel-open-dkms": "580.95.05-1",
    "nvidia-persistenced": "580.95.05-1",
    "nvidia-modprobe": "580.95.05-1",
    "cuda-toolkit-12-8": "12.8.0-1",
}


def deb822(text):
    return dict(line.split(": ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_deb822_source(host):
    source = host.file("/etc/apt/sources.list.d/gpufleet-nvidia-cuda.sources")
    assert source.mode == 0o644
    fields = deb822(source.content_string)
    assert fields["Types"] == "deb"
    assert fields["URIs"] == REPO_URI
    assert fields["Suites"] == "/"
    assert "Components" not in fields
    assert fields["Architectures"] == "amd64"
    assert fields["Signed-By"] == KEYRING


def test_key_is_the_repository_key(host):
    key = host.file(KEYRING)
    assert key.user == "root"
    assert key.mode == 0o644
    served = host.check_output("curl -fsS %s", REPO_URI + "3bf863cc.pub")
    assert key.content_string.strip() == served.strip()
    assert key.content_string.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")


def test_apt_trusts_the_repository_with_that_key(host):
    # The signature check runs again, offline, against the lists apt keeps.
    policy = host.check_output("apt-cache policy nvidia-driver-cuda")
    assert "t-nv-repo:8080/debian12/x86_64" in policy
    assert not host.file("/etc/apt/sources.list.d/cuda-debian12-x86_64.list").exists


@pytest.mark.parametrize(("name", "version"), sorted(EXPECTED.items()))
def test_pinned_versions_installed(host, name, version):
    package = host.package(name)
    assert package.is_installed
    assert package.version == version


def test_newer_branch_in_the_repository_is_refused(host):
    # The repository also holds 590.44.01; the pin keeps the 580 branch.
    policy = host.check_output("apt-cache policy nvidia-driver-cuda")
    assert "590.44.01-1 500" in policy
    assert "Candidate: 580.95.05-1" in policy
    assert "Candidate: 12.8.0-1" in host.check_output("apt-cache policy cuda-toolkit-12-8")


def test_packages_held(host):
    held = set(host.check_output("apt-mark showhold").split())
    assert held == set(EXPECTED)


def test_pin_file(host):
    pin = host.file("/etc/apt/preferences.d/gpufleet-nvidia.pref")
    assert pin.mode == 0o644
    text = pin.content_string
    assert text.startswith("#")
    assert "Package: src:*nvidia*:any src:cuda-drivers:any src:cuda-compat:any\nPin: version 580.*\nPin-Priority: 1000" in text
    assert "Package: cuda-toolkit-12-8\nPin: version 12.8.0-*\nPin-Priority: 1000" in text


def test_nouveau_blacklisted(host):
    conf = host.file("/etc/modprobe.d/gpufleet-blacklist-nouveau.conf")
    assert conf.mode == 0o644
    lines = [x for x in conf.content_string.splitlines() if x and not x.startswith("#")]
    assert lines == ["blacklist nouveau", "options nouveau modeset=0"]


def test_persistenced_enabled_not_started_without_gpu(host):
    service = host.service("nvidia-persistenced")
    assert service.is_enabled
    # No GPU here: the role enables the daemon for the next boot but starts nothing.
    assert not service.is_running
    dropin = host.file("/etc/systemd/system/nvidia-persistenced.service.d/gpufleet.conf")
    assert "ExecStart=/usr/bin/nvidia-persistenced --verbose\n" in dropin.content_string
    assert host.run("systemd-analyze verify nvidia-persistenced.service").rc == 0


def test_persistenced_unit_really_runs(host):
    # The stand-in unit is real: what the role enabled does start.
    assert host.run("systemctl start nvidia-persistenced.service").rc == 0
    try:
        assert host.service("nvidia-persistenced").is_running
    finally:
        host.run("systemctl stop nvidia-persistenced.service")


def test_no_module_loaded(host):
    assert not host.file("/sys/module/nvidia").exists


def test_device_unit_installed_enabled_and_skipped_without_gpu(host):
    unit = host.file("/etc/systemd/system/gpufleet-nvidia-devices.service")
    assert unit.mode == 0o644
    assert "ConditionPathExists=/etc/modules-load.d/gpufleet-nvidia.conf\n" in unit.content_string
    # No card on the PCI bus: no card node, only /dev/nvidiactl and nvidia-uvm.
    assert "ExecStart=/usr/bin/nvidia-modprobe -c=255\n" in unit.content_string
    assert host.service("gpufleet-nvidia-devices").is_enabled
    # No GPU here: the role loads no NVIDIA module at boot, so the unit's condition skips it.
    assert not host.file("/etc/modules-load.d/gpufleet-nvidia.conf").exists
    assert host.run("systemd-analyze verify gpufleet-nvidia-devices.service").rc == 0
    assert host.run("systemctl start gpufleet-nvidia-devices.service").rc == 0
    shown = host.check_output("systemctl show -p ConditionResult -p Result -p ActiveState gpufleet-nvidia-devices.service")
    assert "ConditionResult=no" in shown
    assert "Result=success" in shown
    assert host.run("systemctl is-failed gpufleet-nvidia-devices.service").rc != 0
