"""Every molecule scenario runs on the shared fleet host definition."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((ROOT / ".config/molecule/config.yml").read_text())
HOST_SETTINGS = {k: v for k, v in BASE["platforms"][0].items() if k not in ("name", "groups", "network")}
SCENARIOS = sorted(p.parent for p in (ROOT / "molecule").glob("*/molecule.yml"))


def test_base_has_the_fleet_hosts():
    assert [p["name"] for p in BASE["platforms"]] == ["t-gpu1", "t-gpu2"]
    assert BASE["driver"]["name"] == "podman"
    assert BASE["prerun"] is False
    assert BASE["dependency"]["enabled"] is False
    assert HOST_SETTINGS["image"] == "localhost/gpufleet-debian:12"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_scenario_hosts_keep_fleet_settings(scenario):
    config = yaml.safe_load((scenario / "molecule.yml").read_text()) or {}
    for platform in config.get("platforms", []):
        for key, value in HOST_SETTINGS.items():
            if key == "image":
                # A scenario may use an image built on top of the fleet image.
                assert str(platform.get(key, "")).startswith("localhost/gpufleet-"), (scenario.name, platform["name"])
                continue
            if key == "extra_opts":
                # Scenarios may add options (a volume), never drop the fleet's.
                assert set(value) <= set(platform.get(key, [])), (scenario.name, platform["name"])
                continue
            assert platform.get(key) == value, (scenario.name, platform["name"], key)
        assert str(platform.get("network", "")).startswith("gpufleet-test"), (scenario.name, platform["name"])


def make_variable(name):
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if x.startswith(name + " "))
    return line.split("=", 1)[1].split()


def test_scenarios_in_make_test():
    """make test runs every scenario once, in one of its two lanes."""
    lanes = [make_variable(name) for name in ("MOLECULE_MAIN_SCENARIOS", "MOLECULE_BESIDE_SCENARIOS", "MOLECULE_LIGHT_SCENARIOS")]
    listed = [name for lane in lanes for name in lane]
    assert sorted(listed) == sorted(p.name for p in SCENARIOS), "every scenario runs in make test, once"
    recipe = (ROOT / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    for name in ("MOLECULE_MAIN_SCENARIOS", "MOLECULE_BESIDE_SCENARIOS", "MOLECULE_LIGHT_SCENARIOS"):
        assert "$(%s)" % name in recipe, name
    assert "ansible-lint sanity hostile" in recipe


def _hosts_and_networks(scenario):
    config = yaml.safe_load((scenario / "molecule.yml").read_text()) or {}
    platforms = config.get("platforms", BASE["platforms"])
    names = {p["name"] for p in platforms}
    networks = {n for p in platforms for n in str(p.get("network", "")).split(",") if n}
    return names, networks


def test_scenarios_that_run_at_once_share_no_host_or_network():
    """The lanes of make test run scenarios at the same time: none may touch another's containers or networks."""
    seen = {}
    for scenario in SCENARIOS:
        names, networks = _hosts_and_networks(scenario)
        for item in sorted(names) + ["network:" + n for n in sorted(networks)]:
            assert item not in seen, "%s is used by both %s and %s" % (item, seen[item], scenario.name)
            seen[item] = scenario.name
