# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""A catalogue of GPU profiles, for planning on cards that are not (yet) in the server.

The catalogue is Python data (not YAML) because it ships to remote hosts with the
modules that import it. Every figure carries its public source in a comment.

Conventions:

* ``memory_gib``: the marketed memory size. GDDR and HBM chips come in binary sizes,
  so "24 GB" is 24 GiB of chips; NVML reports a little less (the driver keeps a few
  hundred MiB: an H100 80GB shows 85520809984 bytes = 79.65 GiB). Where a real NVML
  capture exists the exact figure is kept in ``nvml_memory_total_bytes``.
* ``bandwidth_gbs``: peak memory bandwidth in GB/s (10^9 bytes/s), as NVIDIA publishes it.
* ``nvlink``: ``None`` when the card has no NVLink; else ``{"gbs": total bidirectional
  GB/s per card, "kind": "switch" | "bridge", "links": links per card, "nvml_version":
  NVML's nvmlNvlinkVersion_t value (4 = NVLink 3.0, 6 = NVLink 4.0; the H200 capture
  reports 6)}``. ``switch`` (SXM boards) joins every card to every other card;
  ``bridge`` joins cards in pairs (0-1, 2-3, ...). Link counts: 18 per Hopper SXM card
  (the H200 capture), 12 per A100 SXM4 (A100 datasheet), 4 per GA102 bridge (GA102
  whitepaper), 12 for the H100 PCIe bridge set (3 bridges, 600 GB/s at 50 GB/s a link).
* ``pcie_p2p``: whether the driver allows CUDA peer-to-peer between two such cards over
  PCIe. NVIDIA disables it on GeForce cards (confirmed for the RTX 4090 by NVIDIA on its
  developer forum; Puget Systems found the same, reported at
  https://www.purepc.pl/nvidia-geforce-rtx-4090-amerykanska-firma-potwierdza-ze-jej-topowy-uklad-nie-obsluguje-profesjonalnego-trybu-peer-to-peer
  which notes Ampere GeForce had already dropped it; only patched open kernel modules
  such as https://github.com/tinygrad/open-gpu-kernel-modules turn it back on).
  Professional and data-centre cards keep it.
"""

from __future__ import annotations

GIB = 1024**3

# fmt: off
PROFILES = {
    # --- GeForce (driver disables PCIe P2P; see module docstring) -----------------
    "rtx-3050-8gb": {
        "name": "NVIDIA GeForce RTX 3050",
        "architecture": "ampere", "compute_capability": "8.6",
        # 8 GB GDDR6, 128-bit, 224 GB/s, PCIe 4.0 x8:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3050/ (specs table)
        "memory_gib": 8, "bandwidth_gbs": 224, "pcie_gen": 4, "pcie_width": 8,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-3060-12gb": {
        "name": "NVIDIA GeForce RTX 3060",
        "architecture": "ampere", "compute_capability": "8.6",
        # 12 GB GDDR6, 192-bit at 15 Gbps = 360 GB/s, PCIe 4.0 x16:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3060-3060ti/
        "memory_gib": 12, "bandwidth_gbs": 360, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-3090": {
        "name": "NVIDIA GeForce RTX 3090",
        "architecture": "ampere", "compute_capability": "8.6",
        # 24 GB GDDR6X, 384-bit at 19.5 Gbps = 936 GB/s, PCIe 4.0 x16:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3090-3090ti/
        "memory_gib": 24, "bandwidth_gbs": 936, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-3090-nvlink": {
        "name": "NVIDIA GeForce RTX 3090",
        "architecture": "ampere", "compute_capability": "8.6",
        # same card with the optional NVLink bridge (the last GeForce with one):
        # 112.5 GB/s bidirectional, NVIDIA Ampere GA102 whitepaper, "NVLink" section,
        # https://www.nvidia.com/content/PDF/nvidia-ampere-ga-102-gpu-architecture-whitepaper-v2.pdf
        "memory_gib": 24, "bandwidth_gbs": 936, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": {"gbs": 112.5, "kind": "bridge", "links": 4, "nvml_version": 4}, "pcie_p2p": False,
    },
    "rtx-4060-ti-16gb": {
        "name": "NVIDIA GeForce RTX 4060 Ti",
        "architecture": "ada", "compute_capability": "8.9",
        # 16 GB GDDR6, 128-bit at 18 Gbps = 288 GB/s, PCIe 4.0 x8:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4060-4060ti/
        "memory_gib": 16, "bandwidth_gbs": 288, "pcie_gen": 4, "pcie_width": 8,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-4090": {
        "name": "NVIDIA GeForce RTX 4090",
        "architecture": "ada", "compute_capability": "8.9",
        # 24 GB GDDR6X, 384-bit at 21 Gbps = 1008 GB/s, PCIe 4.0 x16, no NVLink:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4090/
        "memory_gib": 24, "bandwidth_gbs": 1008, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-5080": {
        "name": "NVIDIA GeForce RTX 5080",
        "architecture": "blackwell", "compute_capability": "12.0",
        # 16 GB GDDR7, 256-bit at 30 Gbps = 960 GB/s, PCIe 5.0 x16:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5080/
        # (960 GB/s also in https://www.tweaktown.com/news/102417/ )
        "memory_gib": 16, "bandwidth_gbs": 960, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": False,
    },
    "rtx-5090": {
        "name": "NVIDIA GeForce RTX 5090",
        "architecture": "blackwell", "compute_capability": "12.0",
        # 32 GB GDDR7, 512-bit at 28 Gbps = 1792 GB/s, PCIe 5.0 x16:
        # https://www.nvidia.com/en-us/geforce/graphics-cards/50-series/rtx-5090/
        "memory_gib": 32, "bandwidth_gbs": 1792, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": False,
    },
    # --- Professional (P2P over PCIe allowed) --------------------------------------
    "rtx-a4000": {
        "name": "NVIDIA RTX A4000",
        "architecture": "ampere", "compute_capability": "8.6",
        # 16 GB GDDR6 ECC, 448 GB/s, PCIe 4.0 x16, no NVLink:
        # https://www.nvidia.com/content/dam/en-zz/Solutions/gtcs21/rtx-a4000/nvidia-rtx-a4000-datasheet.pdf
        "memory_gib": 16, "bandwidth_gbs": 448, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "rtx-a6000": {
        "name": "NVIDIA RTX A6000",
        "architecture": "ampere", "compute_capability": "8.6",
        # 48 GB GDDR6 ECC, 768 GB/s, PCIe 4.0 x16:
        # https://www.nvidia.com/content/dam/en-zz/Solutions/design-visualization/quadro-product-literature/proviz-print-nvidia-rtx-a6000-datasheet-us-nvidia-1454980-r9-web%20(1).pdf
        "memory_gib": 48, "bandwidth_gbs": 768, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "rtx-a6000-nvlink": {
        "name": "NVIDIA RTX A6000",
        "architecture": "ampere", "compute_capability": "8.6",
        # with the 2-slot/3-slot NVLink bridge: 112.5 GB/s bidirectional (same datasheet)
        "memory_gib": 48, "bandwidth_gbs": 768, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": {"gbs": 112.5, "kind": "bridge", "links": 4, "nvml_version": 4}, "pcie_p2p": True,
    },
    "rtx-6000-ada": {
        "name": "NVIDIA RTX 6000 Ada Generation",
        "architecture": "ada", "compute_capability": "8.9",
        # 48 GB GDDR6 ECC, 960 GB/s, PCIe 4.0 x16, no NVLink:
        # https://www.nvidia.com/content/dam/en-zz/Solutions/design-visualization/rtx-6000/proviz-print-rtx6000-datasheet-web-2504660.pdf
        "memory_gib": 48, "bandwidth_gbs": 960, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    # --- Data centre ------------------------------------------------------------------
    "l4": {
        "name": "NVIDIA L4",
        "architecture": "ada", "compute_capability": "8.9",
        # 24 GB GDDR6, 300 GB/s, PCIe 4.0 x16, no NVLink:
        # https://www.nvidia.com/en-us/data-center/l4/ (datasheet table)
        "memory_gib": 24, "bandwidth_gbs": 300, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "l40s": {
        "name": "NVIDIA L40S",
        "architecture": "ada", "compute_capability": "8.9",
        # 48 GB GDDR6 ECC, 864 GB/s, PCIe 4.0 x16, NVLink not supported:
        # https://www.nvidia.com/en-us/data-center/l40s/ (datasheet)
        "memory_gib": 48, "bandwidth_gbs": 864, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "a100-40gb": {
        "name": "NVIDIA A100-SXM4-40GB",
        "architecture": "ampere", "compute_capability": "8.0",
        # SXM4: 40 GB HBM2, 1555 GB/s, NVLink 600 GB/s (NVSwitch on HGX boards):
        # https://www.nvidia.com/content/dam/en-zz/Solutions/Data-Center/a100/pdf/nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf
        "memory_gib": 40, "bandwidth_gbs": 1555, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": {"gbs": 600, "kind": "switch", "links": 12, "nvml_version": 4}, "pcie_p2p": True,
    },
    "a100-80gb": {
        "name": "NVIDIA A100-SXM4-80GB",
        "architecture": "ampere", "compute_capability": "8.0",
        # SXM4: 80 GB HBM2e, 2039 GB/s, NVLink 600 GB/s (same datasheet)
        "memory_gib": 80, "bandwidth_gbs": 2039, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": {"gbs": 600, "kind": "switch", "links": 12, "nvml_version": 4}, "pcie_p2p": True,
    },
    "a100-80gb-pcie": {
        "name": "NVIDIA A100 80GB PCIe",
        "architecture": "ampere", "compute_capability": "8.0",
        # PCIe: 80 GB HBM2e, 1935 GB/s, PCIe 4.0 x16 (same datasheet); bridge not assumed
        "memory_gib": 80, "bandwidth_gbs": 1935, "pcie_gen": 4, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "h100-pcie": {
        "name": "NVIDIA H100 PCIe",
        "architecture": "hopper", "compute_capability": "9.0",
        # H100 PCIe: 80 GB HBM2e, 2.0 TB/s, PCIe 5.0 x16:
        # https://resources.nvidia.com/en-us-tensor-core/nvidia-tensor-core-gpu-datasheet
        "memory_gib": 80, "bandwidth_gbs": 2000, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": None, "pcie_p2p": True,
    },
    "h100-pcie-nvlink": {
        "name": "NVIDIA H100 PCIe",
        "architecture": "hopper", "compute_capability": "9.0",
        # with the NVLink bridge for pairs: 600 GB/s (same datasheet, "NVLink: 600GB/s")
        "memory_gib": 80, "bandwidth_gbs": 2000, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": {"gbs": 600, "kind": "bridge", "links": 12, "nvml_version": 6}, "pcie_p2p": True,
    },
    "h100-sxm": {
        "name": "NVIDIA H100 80GB HBM3",
        "architecture": "hopper", "compute_capability": "9.0",
        # H100 SXM: 80 GB HBM3, 3.35 TB/s, NVLink 900 GB/s (same datasheet).
        # NVML name and memory from the capture tests/fixtures/nvml/h100x1.nvml.json.
        "memory_gib": 80, "bandwidth_gbs": 3350, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": {"gbs": 900, "kind": "switch", "links": 18, "nvml_version": 6}, "pcie_p2p": True,
        "nvml_memory_total_bytes": 85520809984,
    },
    "h200": {
        "name": "NVIDIA H200",
        "architecture": "hopper", "compute_capability": "9.0",
        # H200 SXM: 141 GB HBM3e, 4.8 TB/s, NVLink 900 GB/s (18 links):
        # https://www.nvidia.com/en-us/data-center/h200/ (specifications table).
        # NVML name, memory and the 18 active links per card from the capture
        # tests/fixtures/nvml/h200x2-nvlink.nvml.json.
        "memory_gib": 141, "bandwidth_gbs": 4800, "pcie_gen": 5, "pcie_width": 16,
        "nvlink": {"gbs": 900, "kind": "switch", "links": 18, "nvml_version": 6}, "pcie_p2p": True,
        "nvml_memory_total_bytes": 150754820096,
    },
}
# fmt: on


# Cards in one server the catalogue describes (the pair list grows with its square).
MAX_COUNT = 64


class CatalogError(ValueError):
    """A profile name or count the catalogue cannot serve; ``param`` names the culprit."""

    def __init__(self, param, message):
        super().__init__(message)
        self.param = param


def normalize_name(profile):
    """Accept "RTX 4090", "rtx_4090", "rtx-4090": lower case, dashes."""
    return "-".join(str(profile).strip().lower().replace("_", " ").replace("-", " ").split())


def profile_names():
    return sorted(PROFILES)


def get_profile(profile):
    key = normalize_name(profile)
    if key not in PROFILES:
        raise CatalogError(
            "gpu_profile",
            "gpu_profile %r is not in the catalogue; use one of: %s" % (profile, ", ".join(profile_names())),
        )
    return key, PROFILES[key]


def memory_bytes(entry):
    """Bytes one card of this profile reports through NVML (exact when a capture exists)."""
    return int(entry.get("nvml_memory_total_bytes") or entry["memory_gib"] * GIB)


def match_name(name, memory_total_bytes=None):
    """Catalogue key for an NVML card name, or None.

    Several profiles share a name (with and without a bridge); the bandwidth is the
    same for all of them, so the first by memory closeness is returned.
    """
    if not name:
        return None
    wanted = name.strip().lower()
    keys = [key for key in sorted(PROFILES) if PROFILES[key]["name"].lower() == wanted]
    if not keys:
        return None
    if memory_total_bytes:
        keys.sort(key=lambda key: abs(memory_bytes(PROFILES[key]) - memory_total_bytes))
    return keys[0]


def _pair_status(entry, first, second):
    """(p2p statuses, interconnect) between two cards of one profile."""
    nvlink = entry.get("nvlink")
    joined = False
    if nvlink:
        joined = nvlink["kind"] == "switch" or first // 2 == second // 2
    if joined:
        return {"read": "ok", "write": "ok", "nvlink": "ok", "atomics": "ok"}, "nvlink"
    if entry["pcie_p2p"]:
        return {"read": "ok", "write": "ok", "nvlink": "not_supported", "atomics": "ok"}, "pcie_p2p"
    return (
        {"read": "not_supported", "write": "not_supported", "nvlink": "not_supported", "atomics": "not_supported"},
        "pcie_no_p2p",
    )


def _catalog_card(key, entry, index, count):
    """Card ``index`` of ``count`` as NVML facts would describe it; NVLink is active where the card has a partner."""
    nvlink = entry.get("nvlink")
    has_partner = bool(nvlink) and count > 1 and (nvlink["kind"] == "switch" or index ^ 1 < count)
    return {
        "index": index,
        "uuid": None,
        "pci_bus_id": None,
        "name": entry["name"],
        "memory_total_bytes": memory_bytes(entry),
        "memory_free_bytes": None,
        "compute_capability": entry["compute_capability"],
        "architecture": entry["architecture"],
        "pcie": {
            "gen_current": entry["pcie_gen"],
            "gen_max": entry["pcie_gen"],
            "width_current": entry["pcie_width"],
            "width_max": entry["pcie_width"],
        },
        "nvlink": {
            "active_links": nvlink["links"] if has_partner else 0,
            "version": nvlink["nvml_version"] if has_partner else None,
        },
        "mig_mode": None,
        "persistence_mode": None,
        "ecc_enabled": None,
        "power_limit_watts": None,
        "processes": [],
        "catalog_profile": key,
    }


def _catalog_pairs(entry, count):
    """Every ordered pair of distinct cards with its peer-to-peer status and interconnect."""
    pairs = []
    for first in range(count):
        for second in range(count):
            if first == second:
                continue
            p2p, interconnect = _pair_status(entry, first, second)
            pairs.append({"from": first, "to": second, "p2p": p2p, "common_ancestor": None, "interconnect": interconnect})
    return pairs


def profile_facts(profile, count):
    """Facts in the shape of the ``nvidia_gpus`` contract for ``count`` cards of a profile.

    ``source`` is ``"catalog"``; identifiers NVML would give (UUID, PCI bus id) are None
    because the cards are imagined, not read.
    """
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_COUNT:
        raise CatalogError("gpu_count", "gpu_count must be a whole number of cards from 1 to %d, one server (got %r)" % (MAX_COUNT, count))
    key, entry = get_profile(profile)
    gpus = [_catalog_card(key, entry, index, count) for index in range(count)]
    pairs = _catalog_pairs(entry, count)
    return {
        "available": True,
        "reason": None,
        "source": "catalog",
        "driver_version": None,
        "cuda_driver_version": None,
        "nvml_version": None,
        "count": count,
        "gpus": gpus,
        "pairs": pairs,
    }
