"""Render the nvidia role for every supported distribution, without a host.

The role's own files are read with Ansible's loader and templated with
Ansible's Templar, with the distribution facts of each platform faked: the
repository line, the package names, the pin file and the preflight asserts
are the role's, not copies of them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import holds, load_trusted, trust_as_template

ROLE = Path(__file__).resolve().parents[3] / "roles" / "nvidia"
LOADER = DataLoader()

# distribution, version, major version -> vars file, repository path, Debian arch
PLATFORMS = {
    "debian12": ("Debian", "12.12", "12", "Debian-12.yml"),
    "ubuntu2204": ("Ubuntu", "22.04", "22", "Ubuntu-22.04.yml"),
    "ubuntu2404": ("Ubuntu", "24.04", "24", "Ubuntu-24.04.yml"),
}
ARCHES = {"x86_64": ("x86_64", "amd64"), "aarch64": ("sbsa", "arm64")}
NVIDIA_KEY = "EB693B3035CD5710E231E123A4B469963BF863CC"


def load(rel):
    return load_trusted(LOADER, str(ROLE / rel))


def facts(platform, arch="x86_64"):
    name, version, major = PLATFORMS[platform][:3]
    return {"distribution": name, "distribution_version": version, "distribution_major_version": major, "architecture": arch}


def role_vars(platform, arch="x86_64", **overrides):
    """Variables as the role sees them after its preflight loaded the distribution file."""
    variables = dict(load("defaults/main.yml"))
    variables.update(overrides)
    variables.update(load("vars/main.yml"))
    variables.update(load("vars/" + PLATFORMS[platform][3]))
    variables["ansible_facts"] = facts(platform, arch)
    variables["role_path"] = str(ROLE)
    variables["ansible_managed"] = "Ansible managed"
    variables["ansible_check_mode"] = False
    variables["inventory_hostname"] = "gpu1"
    return variables


def render(variables, expression):
    return Templar(loader=LOADER, variables=variables).template(trust_as_template(expression))


def tasks(rel):
    """Every task of a task file, blocks flattened."""
    found = []
    for task in load(rel):
        found.append(task)
        found.extend(task.get("block", []))
    return found


def task(rel, name):
    return next(t for t in tasks(rel) if t.get("name") == name)


def assert_results(variables):
    """(name, passed, fail_msg) of each assert of the preflight, with its own when."""
    templar = Templar(loader=LOADER, variables=variables)
    results = []
    for entry in tasks("tasks/preflight.yml"):
        args = entry.get("ansible.builtin.assert")
        # The schema check (role_input_problems) needs Ansible's plugin loader:
        # tests/unit/hostile/test_role_inputs_hostile.py runs it for real.
        if args is None or entry["name"] == "Check the role's inputs":
            continue
        when = entry.get("when")
        if when is not None and not holds(templar, when):
            continue
        that = args["that"] if isinstance(args["that"], list) else [args["that"]]
        passed = all(holds(templar, condition) for condition in that)
        results.append((entry["name"], passed, None if passed else " ".join(templar.template(args["fail_msg"]).split())))
    return results


def failures(variables):
    return [(name, msg) for name, passed, msg in assert_results(variables) if not passed]


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_vars_file_chosen_by_first_found(platform):
    variables = role_vars(platform)
    include = task("tasks/preflight.yml", "Load the variables of this distribution")
    candidates = render({**variables, **include["vars"]}, "{{ __nvidia_vars_files.files }}")
    chosen = next(name for name in candidates if (ROLE / "vars" / name).exists())
    assert chosen == PLATFORMS[platform][3]


@pytest.mark.parametrize("arch", sorted(ARCHES))
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_repository_line(platform, arch):
    variables = role_vars(platform, arch)
    repo = task("tasks/install.yml", "Add NVIDIA's CUDA repository")["ansible.builtin.deb822_repository"]
    rendered = {key: render(variables, value) if isinstance(value, str) else [render(variables, v) for v in value] for key, value in repo.items()}
    path, deb_arch = ARCHES[arch]
    assert rendered["uris"] == [f"https://developer.download.nvidia.com/compute/cuda/repos/{platform}/{path}/"]
    assert rendered["suites"] == ["/"]
    assert "components" not in rendered  # a flat repository has none
    assert rendered["types"] == ["deb"]
    assert rendered["architectures"] == [deb_arch]
    assert rendered["signed_by"] == "/etc/apt/keyrings/gpufleet-nvidia-cuda.asc"
    assert render(variables, "{{ _nvidia_key_url }}") == f"https://developer.download.nvidia.com/compute/cuda/repos/{platform}/{path}/3bf863cc.pub"
    assert render(variables, "{{ _nvidia_key_fingerprint }}") == NVIDIA_KEY


def test_mirror_and_own_key():
    variables = role_vars(
        "debian12",
        nvidia_repo_base_url="http://mirror.example/nvidia/cuda/",
        nvidia_repo_key_fingerprint="abcd 0123 4567 89ab cdef  0123 4567 89ab cdef 0123",
    )
    assert render(variables, "{{ _nvidia_repo_url }}") == "http://mirror.example/nvidia/cuda/debian12/x86_64/"
    assert render(variables, "{{ _nvidia_key_url }}") == "http://mirror.example/nvidia/cuda/debian12/x86_64/3bf863cc.pub"
    assert render(variables, "{{ _nvidia_key_fingerprint }}") == "ABCD0123456789ABCDEF0123456789ABCDEF0123"
    variables = role_vars("debian12", nvidia_repo_key_url="https://keys.example/cuda.asc")
    assert render(variables, "{{ _nvidia_key_url }}") == "https://keys.example/cuda.asc"


DRIVER_PACKAGES = [
    # platform, branch, profile, modules -> packages
    ("debian12", "580", "compute", "open", ["nvidia-driver-cuda", "nvidia-kernel-open-dkms", "nvidia-persistenced", "nvidia-modprobe"]),
    ("debian12", "590", "compute", "proprietary", ["nvidia-driver-cuda", "nvidia-kernel-dkms", "nvidia-persistenced", "nvidia-modprobe"]),
    ("debian12", "580", "full", "open", ["nvidia-open", "nvidia-persistenced", "nvidia-modprobe"]),
    ("debian12", "580", "full", "proprietary", ["cuda-drivers", "nvidia-persistenced", "nvidia-modprobe"]),
    (
        "ubuntu2204",
        "580",
        "compute",
        "open",
        ["libnvidia-compute-580", "nvidia-dkms-580-open", "nvidia-compute-utils-580", "nvidia-utils-580", "nvidia-modprobe"],
    ),
    (
        "ubuntu2404",
        "570",
        "compute",
        "proprietary",
        ["libnvidia-compute-570", "nvidia-dkms-570", "nvidia-compute-utils-570", "nvidia-utils-570", "nvidia-modprobe"],
    ),
    ("ubuntu2404", "590", "compute", "open", ["libnvidia-compute", "nvidia-dkms-open", "nvidia-persistenced", "nvidia-modprobe"]),
    ("ubuntu2204", "595", "compute", "proprietary", ["libnvidia-compute", "nvidia-dkms", "nvidia-persistenced", "nvidia-modprobe"]),
    ("ubuntu2404", "580", "full", "open", ["nvidia-open", "nvidia-modprobe"]),
    ("ubuntu2204", "590", "full", "proprietary", ["cuda-drivers", "nvidia-persistenced", "nvidia-modprobe"]),
]


@pytest.mark.parametrize(("platform", "branch", "profile", "modules", "expected"), DRIVER_PACKAGES)
def test_driver_package_names(platform, branch, profile, modules, expected):
    variables = role_vars(
        platform,
        nvidia_driver_branch=branch,
        nvidia_driver_profile=profile,
        nvidia_driver_kernel_modules=modules,
        nvidia_cuda_toolkit_version="12.8.1" if int(branch) < 580 else "13.0.2",
    )
    assert render(variables, "{{ _nvidia_driver_packages }}") == expected
    install = task("tasks/install.yml", "Install the driver at the pinned version")["ansible.builtin.apt"]
    assert render(variables, install["name"]) == [name + "=" + branch + ".*" for name in expected]
    module_package = render(variables, "{{ _nvidia_kernel_module_package }}")
    assert module_package in expected or profile == "full"
    assert "dkms" in module_package
    assert ("open" in module_package) == (modules == "open")


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_exact_driver_version_and_extras(platform):
    variables = role_vars(
        platform,
        nvidia_driver_version="580.95.05",
        nvidia_driver_extra_packages=["nvidia-fabricmanager-580"],
    )
    packages = render(variables, "{{ _nvidia_driver_packages }}")
    assert packages[-1] == "nvidia-fabricmanager-580"
    install = task("tasks/install.yml", "Install the driver at the pinned version")["ansible.builtin.apt"]
    assert render(variables, install["name"]) == [name + "=580.95.05-*" for name in packages]


@pytest.mark.parametrize(("version", "package", "glob"), [("12.8.1", "cuda-toolkit-12-8", "12.8.1-*"), ("13.0.2", "cuda-toolkit-13-0", "13.0.2-*")])
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_toolkit_package(platform, version, package, glob):
    variables = role_vars(platform, nvidia_cuda_toolkit_version=version)
    toolkit = task("tasks/install.yml", "Install the CUDA toolkit at the pinned version")["ansible.builtin.apt"]
    assert render(variables, toolkit["name"]) == f"{package}={glob}"
    held = render(variables, "{{ _nvidia_held_packages }}")
    assert held[-1] == package
    assert render({**variables, "nvidia_cuda_toolkit_install": False}, "{{ _nvidia_held_packages }}") == held[:-1]


def render_template(variables, name):
    return render(variables, (ROLE / "templates" / name).read_text())


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_pin_file(platform):
    text = render_template(role_vars(platform), "gpufleet-nvidia.pref.j2")
    assert text.startswith("#")
    stanzas = [dict(line.split(": ", 1) for line in block.splitlines() if not line.startswith("#")) for block in text.strip().split("\n\n")]
    assert stanzas == [
        {"Package": "src:*nvidia*:any src:cuda-drivers:any src:cuda-compat:any", "Pin": "version 580.*", "Pin-Priority": "1000"},
        {"Package": "cuda-toolkit-12-8", "Pin": "version 12.8.1-*", "Pin-Priority": "1000"},
    ]
    text = render_template(role_vars(platform, nvidia_driver_version="580.95.05", nvidia_cuda_toolkit_install=False), "gpufleet-nvidia.pref.j2")
    assert "Pin: version 580.95.05-*" in text
    assert "cuda-toolkit" not in text


def test_other_templates():
    variables = role_vars("debian12")
    blacklist = render_template(variables, "blacklist-nouveau.conf.j2").splitlines()
    assert blacklist[0].startswith("#")
    assert blacklist[-2:] == ["blacklist nouveau", "options nouveau modeset=0"]
    dropin = render_template(variables, "nvidia-persistenced.conf.j2")
    assert "ExecStart=\nExecStart=/usr/bin/nvidia-persistenced --verbose\n" in dropin
    off = render_template({**variables, "nvidia_persistence_mode": False}, "nvidia-persistenced.conf.j2")
    assert "ExecStart=/usr/bin/nvidia-persistenced --verbose --no-persistence-mode\n" in off


@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_preflight_passes_with_defaults(platform):
    assert failures(role_vars(platform)) == []
    assert failures(role_vars(platform, "aarch64")) == []


@pytest.mark.parametrize(
    ("branch", "driver", "toolkit", "ok"),
    [
        ("580", "", "13.0.2", True),
        ("570", "", "12.8.1", True),
        ("570", "", "12.9.0", False),
        ("575", "", "12.9.1", True),
        ("560", "", "12.6.3", True),
        ("580", "580.65.06", "13.0.0", True),
        ("580", "580.82.07", "13.0.2", False),  # 13.0 Update 2 needs 580.95.05
        ("590", "", "13.1.1", True),
        ("580", "", "13.1.0", False),
        ("580", "", "12.3.2", True),
        ("550", "", "12.4.7", True),  # an unlisted patch release is checked against 12.4.0
    ],
)
def test_preflight_toolkit_against_driver(branch, driver, toolkit, ok):
    variables = role_vars("debian12", nvidia_driver_branch=branch, nvidia_driver_version=driver, nvidia_cuda_toolkit_version=toolkit)
    failed = failures(variables)
    assert (failed == []) == ok, failed
    if not ok:
        ((name, msg),) = failed
        assert name == "Check that the driver branch supports the CUDA toolkit"
        minimum = render(variables, "{{ _nvidia_toolkit_min_driver }}")
        assert f"CUDA toolkit {toolkit} needs NVIDIA driver {minimum} or newer" in msg
        assert (driver or f"branch {branch}") in msg
        assert f"Set nvidia_driver_branch to {minimum.split('.')[0]} or newer" in msg


def test_preflight_unknown_toolkit_and_extra_rows():
    ((name, msg),) = failures(role_vars("debian12", nvidia_cuda_toolkit_version="14.0.0"))
    assert name == "Check that the role knows which driver the CUDA toolkit needs"
    assert "CUDA toolkit 14.0.0 is not in the role's table" in msg
    assert "nvidia_cuda_driver_requirements_extra" in msg
    extra = {"14.0.0": "620.10.01"}
    failed = failures(role_vars("debian12", nvidia_cuda_toolkit_version="14.0.0", nvidia_cuda_driver_requirements_extra=extra))
    assert [entry[0] for entry in failed] == ["Check that the driver branch supports the CUDA toolkit"]
    assert failures(role_vars("debian12", nvidia_driver_branch="620", nvidia_cuda_toolkit_version="14.0.0", nvidia_cuda_driver_requirements_extra=extra)) == []


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"nvidia_driver_branch": "58"}, 'nvidia_driver_branch to a driver branch such as "580" (it is "58")'),
        ({"nvidia_driver_version": "570.124.06"}, '(it is "570.124.06")'),
        ({"nvidia_cuda_toolkit_version": "12.8"}, '(it is "12.8")'),
    ],
)
def test_preflight_version_formats(overrides, needle):
    failed = failures(role_vars("debian12", **overrides))
    assert failed[0][0] == "Check the version variables"
    assert needle in failed[0][1]


@pytest.mark.parametrize(
    ("distribution", "version", "major", "arch"),
    [("Ubuntu", "20.04", "20", "x86_64"), ("Debian", "11.11", "11", "x86_64"), ("Rocky", "9.4", "9", "x86_64"), ("Debian", "12.12", "12", "ppc64le")],
)
def test_preflight_rejects_unsupported_platform(distribution, version, major, arch):
    variables = role_vars("debian12")
    variables["ansible_facts"] = {"distribution": distribution, "distribution_version": version, "distribution_major_version": major, "architecture": arch}
    first = next(iter(assert_results(variables)))
    name, passed, msg = first
    assert name == "Check that NVIDIA's CUDA repository serves this distribution"
    assert not passed
    assert msg.startswith(f"{distribution} {version} on {arch} is not supported by the nvidia role")
    assert "Debian 12, Ubuntu 22.04 and 24.04 on x86_64 or aarch64" in msg


# Output of the preflight probe on a real host: two H200 (PCI class 0x030200)
# with driver 580.159.04 loaded, Ubuntu 24.04, no update-initramfs (a container).
PROBE_H200X2 = ["gpu=0000:00:06.0", "gpu=0000:00:07.0", "nvidia=580.159.04"]


def set_facts(variables, rel, name):
    """Apply a set_fact task of the role to the variables, as Ansible would."""
    entry = task(rel, name)
    facts_set = {key: render(variables, value) for key, value in entry["ansible.builtin.set_fact"].items()}
    return {**variables, **facts_set}


def activation(probe, installed=None, **overrides):
    """The role's activation decision for a probe output and the installed kernel module package version."""
    variables = role_vars("ubuntu2404", **overrides)
    variables["__nvidia_probe"] = {"stdout_lines": probe}
    variables = set_facts(variables, "tasks/preflight.yml", "Note what this host has")
    module_package = render(variables, "{{ _nvidia_kernel_module_package }}")
    packages = {module_package: [{"name": module_package, "version": installed}]} if installed else {}
    variables["ansible_facts"] = {**variables["ansible_facts"], "packages": packages}
    variables = set_facts(variables, "tasks/configure.yml", "Decide how to activate the driver")
    return set_facts(variables, "tasks/configure.yml", "Note whether a reboot is needed")


def test_probe_of_a_real_gpu_host():
    variables = activation(PROBE_H200X2, "580.159.04-0ubuntu1")
    assert variables["_nvidia_gpu_pci_ids"] == ["0000:00:06.0", "0000:00:07.0"]
    assert variables["_nvidia_module_loaded_version"] == "580.159.04"
    assert variables["_nvidia_module_installed_version"] == "580.159.04"
    assert variables["_nvidia_loaded_nouveau"] is False
    assert variables["_nvidia_initramfs_present"] is False
    assert variables["_nvidia_gpu_present"] is True
    # The installed module is the loaded one: nothing to load, no reboot.
    assert variables["_nvidia_reboot_needed"] is False
    assert variables["_nvidia_load_module"] is False


@pytest.mark.parametrize(
    ("probe", "installed", "reboot", "load"),
    [
        (PROBE_H200X2, "580.172.08-0ubuntu1", True, False),  # upgraded on disk, old module loaded
        (["gpu=0000:01:00.0"], "580.95.05-0ubuntu1", False, True),  # new install, nothing loaded: modprobe
        (["gpu=0000:01:00.0", "nouveau=loaded"], "580.95.05-0ubuntu1", True, False),  # nouveau holds the card
        (["gpu=0000:01:00.0"], None, False, False),  # no driver package installed (another source)
        ([], "580.95.05-0ubuntu1", False, False),  # no GPU: never load, never reboot
        (["nouveau=loaded", "initramfs=present"], "580.95.05-0ubuntu1", False, False),  # no NVIDIA GPU, nouveau for another card
    ],
)
def test_activation_decision(probe, installed, reboot, load):
    variables = activation(probe, installed)
    assert variables["_nvidia_reboot_needed"] is reboot
    assert variables["_nvidia_load_module"] is load
    assert variables["_nvidia_gpu_present"] is (any(line.startswith("gpu=") for line in probe) or any(line.startswith("nvidia=") for line in probe))


def when_holds(variables, rel, name):
    entry = task(rel, name)
    return holds(Templar(loader=LOADER, variables=variables), entry["when"])


def test_boot_modules_and_device_unit_on_a_gpu_host():
    variables = activation(PROBE_H200X2, "580.159.04-0ubuntu1")
    assert int(variables["_nvidia_device_cards"]) == 2
    modules = render_template(variables, "gpufleet-nvidia-modules.conf.j2").splitlines()
    assert modules[0].startswith("#")
    assert [line for line in modules if not line.startswith("#")] == ["nvidia", "nvidia-uvm"]
    assert when_holds(variables, "tasks/configure.yml", "Load nvidia and nvidia-uvm at boot")
    assert not when_holds(variables, "tasks/configure.yml", "Load no NVIDIA module at boot on a host without an NVIDIA GPU")
    assert when_holds(variables, "tasks/configure.yml", "Make the NVIDIA device nodes")
    unit = render_template(variables, "gpufleet-nvidia-devices.service.j2")
    assert "ExecStart=/usr/bin/nvidia-modprobe -c=255 -c=0 -c=1\n" in unit
    assert "ExecStart=/usr/bin/nvidia-modprobe -u -c=0\n" in unit
    assert "ConditionPathExists=/etc/modules-load.d/gpufleet-nvidia.conf\n" in unit


@pytest.mark.parametrize(
    ("probe", "installed"),
    [
        ([], "580.95.05-1"),  # no GPU: the molecule host
        (PROBE_H200X2, "580.172.08-0ubuntu1"),  # a reboot is pending: the old module cannot take the new nvidia-uvm
    ],
)
def test_device_nodes_are_not_made_now(probe, installed):
    variables = activation(probe, installed)
    assert not when_holds(variables, "tasks/configure.yml", "Make the NVIDIA device nodes")
    assert when_holds(variables, "tasks/configure.yml", "Load nvidia and nvidia-uvm at boot") is bool(probe)


def test_the_device_unit_is_installed_and_enabled_everywhere():
    # No when: on a host without a GPU the unit's condition (the modules file) skips it at boot.
    assert "when" not in task("tasks/configure.yml", "Install the unit that makes the NVIDIA device nodes")
    enable = task("tasks/configure.yml", "Enable the device unit at boot")
    assert enable["ansible.builtin.systemd_service"]["enabled"] is True


def test_more_cards_than_one_call_can_make_are_refused():
    variables = {**activation(PROBE_H200X2, "580.159.04-0ubuntu1"), "_nvidia_device_cards": 64}
    check = task("tasks/configure.yml", "Check the number of device nodes to make")["ansible.builtin.assert"]
    templar = Templar(loader=LOADER, variables=variables)
    assert not holds(templar, check["that"])
    assert "makes at most 63 card nodes" in " ".join(templar.template(check["fail_msg"]).split())
    assert holds(Templar(loader=LOADER, variables={**variables, "_nvidia_device_cards": 63}), check["that"])
