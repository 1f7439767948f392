# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""What the collection claims to support agrees everywhere it is written, and names what tests it.

ansible-core: meta/runtime.yml's range runs from the version requirements-oldest.txt
pins (make unit-oldest, make sanity-oldest) to the one requirements.txt pins (make unit,
make sanity). Ubuntu: the roles' meta claims it next to a note that says it is only
render-tested, and only the nvidia role (rendered with Ubuntu facts in
tests/unit/roles/test_nvidia_render.py) reads the distribution.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(path.parent.parent.name for path in ROOT.glob("roles/*/meta/main.yml"))
CODENAMES = {"Debian": {"bookworm": "12"}, "Ubuntu": {"jammy": "22.04", "noble": "24.04"}}
# A fact that tells one distribution from another, in any spelling a role may use.
DISTRIBUTION_FACT = re.compile(r"ansible_(?:facts\s*(?:\[\s*['\"]|\.)\s*)?(?:distribution|os_family|lsb)")
# The roles whose tasks, vars or templates branch on the distribution, each with its Ubuntu render test.
BRANCHING = {"nvidia": "tests/unit/roles/test_nvidia_render.py"}


def pins(name):
    """{package: version} of a requirements file's ``name==version`` lines (extras dropped)."""
    found = {}
    for line in (ROOT / name).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?==(\S+)$", line.strip())
        if match:
            found[match.group(1).lower()] = match.group(2)
    return found


def minor(version):
    parts = version.split(".")
    return int(parts[0]), int(parts[1])


def claimed_range():
    """meta/runtime.yml's requires_ansible as ((major, minor) lowest, (major, minor) first excluded)."""
    text = yaml.safe_load((ROOT / "meta" / "runtime.yml").read_text())["requires_ansible"]
    match = re.fullmatch(r">=(\d+)\.(\d+)\.0,<(\d+)\.(\d+)\.0", text)
    assert match, f"meta/runtime.yml: requires_ansible {text!r} is not of the form '>=X.Y.0,<X.Z.0' this test reads"
    low_major, low_minor, high_major, high_minor = map(int, match.groups())
    return (low_major, low_minor), (high_major, high_minor)


def meta(role):
    return yaml.safe_load((ROOT / "roles" / role / "meta" / "main.yml").read_text())["galaxy_info"]


def test_the_claimed_range_is_the_tested_one():
    low, high = claimed_range()
    oldest = pins("requirements-oldest.txt")["ansible-core"]
    newest = pins("requirements.txt")["ansible-core"]
    assert minor(oldest) == low, f"requirements-oldest.txt tests ansible-core {oldest}, meta/runtime.yml claims from {low[0]}.{low[1]}.0"
    assert (minor(newest)[0], minor(newest)[1] + 1) == high, f"requirements.txt tests ansible-core {newest}, meta/runtime.yml claims up to {high}"


def test_the_oldest_virtualenv_shares_every_other_pin():
    newest = pins("requirements.txt")
    oldest = pins("requirements-oldest.txt")
    assert len(oldest) > 1
    for package, version in oldest.items():
        if package != "ansible-core":
            assert newest.get(package) == version, f"requirements-oldest.txt pins {package}=={version}, requirements.txt {newest.get(package)}"


@pytest.mark.parametrize("role", ROLES)
def test_roles_ask_for_the_oldest_claimed_ansible_core(role):
    low = claimed_range()[0]
    assert meta(role)["min_ansible_version"] == f"{low[0]}.{low[1]}"


def test_readme_states_the_range_and_both_tested_versions():
    readme = (ROOT / "README.md").read_text()
    low, high = claimed_range()
    assert f"ansible-core {low[0]}.{low[1]} to {high[0]}.{high[1] - 1}" in readme
    assert pins("requirements-oldest.txt")["ansible-core"] in readme
    assert pins("requirements.txt")["ansible-core"] in readme


@pytest.mark.parametrize("role", ROLES)
def test_platforms_are_the_nvidia_roles_and_ubuntu_says_render_tested_only(role):
    platforms = {entry["name"]: entry["versions"] for entry in meta(role)["platforms"]}
    assert platforms == {name: list(codes) for name, codes in CODENAMES.items()}
    text = (ROOT / "roles" / role / "meta" / "main.yml").read_text()
    note = text.split("- name: Ubuntu")[0].rsplit("versions:", 1)[1]  # the comment just above the Ubuntu entry
    assert "render-tested only" in note, f"roles/{role}/meta/main.yml: say next to the Ubuntu claim that it is render-tested only"
    named = re.findall(r"(tests/unit/[\w/]+\.py)(?:::(\w+))?", " ".join(line.strip(" #") for line in note.splitlines()))
    assert named, f"roles/{role}/meta/main.yml: name the test that renders the role for Ubuntu"
    for path, function in named:
        assert (ROOT / path).is_file(), f"roles/{role}/meta/main.yml names {path}, which does not exist"
        if function:
            assert re.search(rf"^def {function}\(", (ROOT / path).read_text(), re.M), f"{path} has no {function}"
    if role in BRANCHING:
        assert BRANCHING[role] in [pair[0] for pair in named]


def test_the_nvidia_role_supports_what_the_meta_claims():
    supported = yaml.safe_load((ROOT / "roles" / "nvidia" / "vars" / "main.yml").read_text())["_nvidia_supported_platforms"]
    assert supported == {name: list(codes.values()) for name, codes in CODENAMES.items()}


def test_the_nvidia_render_test_covers_each_ubuntu_release():
    """test_nvidia_render.py's PLATFORMS (each test over every platform) holds Ubuntu 22.04 and 24.04."""
    tree = ast.parse((ROOT / BRANCHING["nvidia"]).read_text())
    node = next(n.value for n in tree.body if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "PLATFORMS" for t in n.targets))
    platforms = ast.literal_eval(node)
    rendered = {row[:2] for row in platforms.values()}
    for name, codes in CODENAMES.items():
        for version in codes.values():
            assert any(n == name and (v == version or v.startswith(version + ".")) for n, v in rendered), (name, version)


def test_only_the_nvidia_role_reads_the_distribution():
    """A role that starts branching on the distribution needs its own Ubuntu render test (add it to BRANCHING)."""
    readers = set()
    for role in ROLES:
        for path in sorted((ROOT / "roles" / role).rglob("*")):
            if path.is_file() and path.parts[len(ROOT.parts) + 2] not in ("meta",) and path.suffix in (".yml", ".yaml", ".j2", ".py", ".sh"):
                if DISTRIBUTION_FACT.search(path.read_text()):
                    readers.add(role)
    assert readers == set(BRANCHING), f"roles reading the distribution: {sorted(readers)}; each needs an Ubuntu render test"


@pytest.mark.parametrize(
    "text",
    [
        "ansible_facts['distribution']",
        'ansible_facts["os_family"]',
        "ansible_facts.distribution_version",
        "ansible_distribution_release",
        "ansible_lsb.codename",
    ],
)
def test_the_distribution_pattern_sees_every_spelling(text):
    assert DISTRIBUTION_FACT.search(text)
