# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest
from ansible_collections.gpufleet.serving.plugins.module_utils import gpu_catalog, nvml_facts

NVML = Path(__file__).resolve().parents[3] / "fixtures" / "nvml"

REQUIRED = [
    "rtx-3050-8gb",
    "rtx-3060-12gb",
    "rtx-3090",
    "rtx-4060-ti-16gb",
    "rtx-4090",
    "rtx-5080",
    "rtx-5090",
    "rtx-a4000",
    "rtx-a6000",
    "rtx-6000-ada",
    "l4",
    "l40s",
    "a100-40gb",
    "a100-80gb",
    "h100-pcie",
    "h100-sxm",
    "h200",
]


@pytest.mark.parametrize("key", REQUIRED)
def test_required_profiles_are_complete(key):
    entry = gpu_catalog.PROFILES[key]
    assert entry["name"].startswith("NVIDIA ")
    assert entry["memory_gib"] > 0 and entry["bandwidth_gbs"] > 0
    assert entry["pcie_gen"] in (4, 5) and entry["pcie_width"] in (8, 16)
    assert isinstance(entry["pcie_p2p"], bool)
    assert entry["architecture"] in ("ampere", "ada", "hopper", "blackwell")
    assert entry["nvlink"] is None or (entry["nvlink"]["kind"] in ("switch", "bridge") and entry["nvlink"]["gbs"] > 0)


def test_every_profile_cites_a_public_source():
    """Each profile's block in the source carries at least one URL in a comment (or inherits its neighbour's)."""
    source = inspect.getsource(gpu_catalog)
    blocks = re.split(r'\n    "([a-z0-9-]+)": \{', source.split("PROFILES = {", 1)[1].split("\n}\n", 1)[0])
    cited = {}
    for key, body in zip(blocks[1::2], blocks[2::2]):
        cited[key] = "http" in body or "same datasheet" in body or "same card" in body
    assert set(cited) == set(gpu_catalog.PROFILES)
    assert [key for key, ok in cited.items() if not ok] == []


@pytest.mark.parametrize(
    ("key", "memory_gib", "bandwidth_gbs"),
    [
        # figures as NVIDIA publishes them (sources in gpu_catalog.py)
        ("rtx-5080", 16, 960),
        ("rtx-4090", 24, 1008),
        ("rtx-3090", 24, 936),
        ("l40s", 48, 864),
        ("l4", 24, 300),
        ("a100-80gb", 80, 2039),
        ("h100-sxm", 80, 3350),
        ("h200", 141, 4800),
    ],
)
def test_published_figures(key, memory_gib, bandwidth_gbs):
    entry = gpu_catalog.PROFILES[key]
    assert (entry["memory_gib"], entry["bandwidth_gbs"]) == (memory_gib, bandwidth_gbs)


def test_geforce_cards_have_no_pcie_p2p_and_datacentre_cards_do():
    geforce = [key for key, entry in gpu_catalog.PROFILES.items() if "GeForce" in entry["name"]]
    others = [key for key in gpu_catalog.PROFILES if key not in geforce]
    assert geforce and others
    assert not any(gpu_catalog.PROFILES[key]["pcie_p2p"] for key in geforce)
    assert all(gpu_catalog.PROFILES[key]["pcie_p2p"] for key in others)


@pytest.mark.parametrize(
    ("given", "key"),
    [("RTX 4090", "rtx-4090"), ("rtx_4060_ti_16gb", "rtx-4060-ti-16gb"), ("  H200 ", "h200"), ("A100-80GB", "a100-80gb")],
)
def test_profile_names_are_forgiving(given, key):
    assert gpu_catalog.get_profile(given)[0] == key


def test_unknown_profile_names_the_parameter_and_lists_choices():
    with pytest.raises(gpu_catalog.CatalogError) as error:
        gpu_catalog.get_profile("rtx-9090")
    assert error.value.param == "gpu_profile"
    assert "rtx-9090" in str(error.value) and "rtx-5080" in str(error.value)


@pytest.mark.parametrize("count", [0, -1, True, "2", None])
def test_bad_counts_name_gpu_count(count):
    with pytest.raises(gpu_catalog.CatalogError) as error:
        gpu_catalog.profile_facts("h200", count)
    assert error.value.param == "gpu_count"


def test_profile_facts_have_the_contract_shape_of_real_facts():
    real = nvml_facts.facts_from_raw(json.loads((NVML / "h200x2-nvlink.nvml.json").read_text()), "snapshot")
    made = gpu_catalog.profile_facts("h200", 2)
    assert set(made) == set(real)
    assert set(made["gpus"][0]) - {"catalog_profile"} == set(real["gpus"][0])
    assert set(made["gpus"][0]["pcie"]) == set(real["gpus"][0]["pcie"])
    assert set(made["pairs"][0]) == set(real["pairs"][0])
    # the H200 profile reproduces what NVML said about the real cards
    for mine, theirs in zip(made["gpus"], real["gpus"]):
        assert mine["name"] == theirs["name"]
        assert mine["memory_total_bytes"] == theirs["memory_total_bytes"]
        assert mine["compute_capability"] == theirs["compute_capability"]
        assert mine["architecture"] == theirs["architecture"]
        assert mine["nvlink"]["active_links"] == theirs["nvlink"]["active_links"] == 18
    assert [p["interconnect"] for p in made["pairs"]] == [p["interconnect"] for p in real["pairs"]] == ["nvlink", "nvlink"]
    assert made["source"] == "catalog"


def test_h100_profile_matches_the_single_card_capture():
    real = nvml_facts.facts_from_raw(json.loads((NVML / "h100x1.nvml.json").read_text()), "snapshot")
    made = gpu_catalog.profile_facts("h100-sxm", 1)
    assert made["gpus"][0]["name"] == real["gpus"][0]["name"]
    assert made["gpus"][0]["memory_total_bytes"] == real["gpus"][0]["memory_total_bytes"]
    assert made["gpus"][0]["nvlink"]["active_links"] == real["gpus"][0]["nvlink"]["active_links"] == 0
    assert made["pairs"] == real["pairs"] == []


@pytest.mark.parametrize(
    ("profile", "count", "expected"),
    [
        ("rtx-4090", 2, {(0, 1): "pcie_no_p2p"}),
        ("l40s", 2, {(0, 1): "pcie_p2p"}),
        ("h100-sxm", 4, {(0, 1): "nvlink", (0, 3): "nvlink", (2, 1): "nvlink"}),
        # bridges join pairs: 0-1 and 2-3, not across
        ("rtx-3090-nvlink", 4, {(0, 1): "nvlink", (3, 2): "nvlink", (1, 2): "pcie_no_p2p", (0, 3): "pcie_no_p2p"}),
        ("rtx-a6000-nvlink", 3, {(0, 1): "nvlink", (1, 2): "pcie_p2p"}),
    ],
)
def test_pairs(profile, count, expected):
    facts = gpu_catalog.profile_facts(profile, count)
    links = {(p["from"], p["to"]): p["interconnect"] for p in facts["pairs"]}
    assert len(links) == count * (count - 1)
    for pair, link in expected.items():
        assert links[pair] == link
    # the contract's rule: nvlink only when both cards report active links
    for pair in facts["pairs"]:
        both = all(facts["gpus"][i]["nvlink"]["active_links"] > 0 for i in (pair["from"], pair["to"]))
        assert (pair["interconnect"] == "nvlink") == (both and pair["p2p"]["nvlink"] == "ok")


def test_a_lone_bridged_card_has_no_active_links():
    facts = gpu_catalog.profile_facts("rtx-a6000-nvlink", 3)
    assert [gpu["nvlink"]["active_links"] for gpu in facts["gpus"]] == [4, 4, 0]


@pytest.mark.parametrize(
    ("name", "memory", "key"),
    [
        ("NVIDIA H200", 150754820096, "h200"),
        ("NVIDIA H100 80GB HBM3", None, "h100-sxm"),
        ("NVIDIA GeForce RTX 5080", 17094934528, "rtx-5080"),
        ("NVIDIA RTX A6000", None, "rtx-a6000"),
        ("NVIDIA B300", None, None),
        (None, None, None),
    ],
)
def test_match_name(name, memory, key):
    assert gpu_catalog.match_name(name, memory) == key
