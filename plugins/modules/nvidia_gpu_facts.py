#!/usr/bin/python
# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

from __future__ import annotations

DOCUMENTATION = r"""
---
module: nvidia_gpu_facts
short_description: Gather facts about NVIDIA GPUs through NVML, or from a saved NVML snapshot
version_added: 0.1.0
description:
  - Reads the host's NVIDIA GPUs through NVML (the C(nvidia-ml-py) binding, imported as C(pynvml)) and returns
    them as the C(nvidia_gpus) fact, with every card and its memory, compute capability, PCIe link, NVLink links,
    MIG, persistence and ECC modes, power limit and running processes, and every ordered pair of cards with
    its peer-to-peer (P2P) status, PCIe common ancestor and a one-word interconnect.
  - A host without an NVIDIA driver, without C(nvidia-ml-py), or without cards is reported with
    C(available=false) and a C(reason) that says which; the task succeeds unless O(required=true).
  - A reading a card does not support (NVML C(NotSupported)) is returned as V(null). Readings refused for other
    reasons (permissions, a lost GPU) are V(null) too, and are also reported as warnings.
  - O(snapshot) reads a saved snapshot instead of NVML, so that a fleet can be planned for cards that are not
    installed here; O(save_snapshot) writes what NVML reported to a file in that same format.
author: gpufleet.serving contributors (@gpufleet)
requirements:
  - nvidia-ml-py (import name C(pynvml)) on the managed host, and an NVIDIA driver, for live readings.
    Neither is needed with O(snapshot).
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - gpufleet.serving.attributes
  - ansible.builtin.action_common_attributes.facts
attributes:
  facts:
    support: full
options:
  snapshot:
    description:
      - Path, on the managed host, of an NVML snapshot to read instead of asking NVML.
      - The facts then have C(source=snapshot). NVML and C(nvidia-ml-py) are not used.
      - The file is JSON as written by O(save_snapshot), or by the C(capture_nvml.py) script in the source
        repository's C(tests/fixtures/nvml/), which also holds real snapshots; see the notes.
    type: path
  save_snapshot:
    description:
      - Path, on the managed host, where the live NVML readings are written as a snapshot.
      - Nothing is written when NVML cannot be used (the task then warns), nor in check mode.
      - The task reports C(changed) when the file is created or its content changes.
    type: path
  required:
    description:
      - Fail when no NVIDIA GPU can be read (no driver, no C(nvidia-ml-py), no cards, or a snapshot without
        cards), with the reason as the message.
      - By default such a host succeeds with C(available=false).
    type: bool
    default: false
notes:
  - Supports check mode; O(save_snapshot) writes nothing in check mode.
  - The snapshot is one JSON object. V(nvml_version), V(driver_version) (strings), V(cuda_driver_version) (NVML's
    integer, for example V(13000)), V(device_count), V(devices) (one object per card, keyed by the NVML call it
    came from, such as V(memory), V(pci), V(compute_capability), V(mig_mode), V(ecc_mode), V(power_limit_mw),
    V(processes) and V(nvlink), a list of per-link V(state), V(version) and V(remote_pci)), V(p2p) and V(topology)
    (keyed V(i-j) for every ordered pair, the raw NVML P2P status and common-ancestor integers).
    Every reading NVML refused is stored as an object with V(error) (the pynvml exception name) and V(msg).
    The collection's C(docs/nvml-snapshot.md) describes every key.
  - The PCIe common ancestor only describes the PCIe path; two NVLinked H200 cards report V(hostbridge).
    The C(interconnect) of a pair therefore comes from the per-link NVLink state and the NVLink P2P status.
  - In nvidia-ml-py 13.x the constant C(NVML_P2P_CAPS_INDEX_READ) is the tuple V((0,\)); this module passes the
    integer indices itself.
  - NVML numbers cards by PCI bus id; CUDA does too only with C(CUDA_DEVICE_ORDER=PCI_BUS_ID).
seealso:
  - name: NVIDIA Management Library (NVML) reference
    description: The NVML calls behind each returned field.
    link: https://docs.nvidia.com/deploy/nvml-api/index.html
"""

EXAMPLES = r"""
- name: Read the GPUs of every server
  gpufleet.serving.nvidia_gpu_facts:

- name: Show how the first two cards are joined
  ansible.builtin.debug:
    msg: "{{ ansible_facts['nvidia_gpus']['pairs'][0]['interconnect'] }}"
  when: ansible_facts['nvidia_gpus']['count'] >= 2

- name: Stop here unless the host has working NVIDIA cards
  gpufleet.serving.nvidia_gpu_facts:
    required: true

- name: Save what NVML reports, to plan other fleets with it later
  gpufleet.serving.nvidia_gpu_facts:
    save_snapshot: /var/tmp/nvml-snapshot.json

- name: Plan for hardware that is not here, from a saved snapshot
  gpufleet.serving.nvidia_gpu_facts:
    snapshot: "{{ playbook_dir }}/snapshots/h200x2.json"
  delegate_to: localhost
"""

RETURN = r"""
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: complex
  contains:
    nvidia_gpus:
      description: The host's NVIDIA GPUs, or why none can be read.
      returned: always
      type: complex
      contains:
        available:
          description: Whether NVML (or the snapshot) reported at least one card.
          type: bool
          returned: always
          sample: true
        reason:
          description: Why no card can be used (no driver, no nvidia-ml-py, no cards); V(null) when C(available) is true.
          type: str
          returned: always
          sample: "no NVIDIA driver: the NVML library (libnvidia-ml.so.1) was not found; install the NVIDIA driver on this host"
        source:
          description: Where the readings came from.
          type: str
          returned: always
          choices: [nvml, snapshot]
          sample: nvml
        driver_version:
          description: NVIDIA driver version.
          type: str
          returned: always
          sample: "580.159.04"
        cuda_driver_version:
          description: Newest CUDA version the driver supports, as major.minor.
          type: str
          returned: always
          sample: "13.0"
        nvml_version:
          description: NVML library version.
          type: str
          returned: always
          sample: "13.580.159.04"
        count:
          description: Number of cards.
          type: int
          returned: always
          sample: 2
        gpus:
          description: One entry per card, in NVML (PCI bus) order.
          type: list
          elements: dict
          returned: always
          contains:
            index:
              description: NVML index of the card.
              type: int
              sample: 0
            uuid:
              description: Card UUID.
              type: str
              sample: GPU-39b080e3-7bed-6984-1add-82e907c1890b
            pci_bus_id:
              description: PCI bus id as NVML writes it.
              type: str
              sample: "00000000:00:06.0"
            name:
              description: Product name.
              type: str
              sample: NVIDIA H200
            memory_total_bytes:
              description: Memory NVML reports for the card, in bytes.
              type: int
              sample: 150754820096
            memory_free_bytes:
              description: Memory free when the facts were read, in bytes.
              type: int
              sample: 150109880320
            compute_capability:
              description: CUDA compute capability, major.minor.
              type: str
              sample: "9.0"
            architecture:
              description: Lower-case architecture name (from NVML, else from the compute capability).
              type: str
              sample: hopper
            pcie:
              description: PCIe link generation and width, current and maximum.
              type: dict
              sample: {gen_current: 5, gen_max: 5, width_current: 16, width_max: 16}
            nvlink:
              description:
                - Number of NVLink links that are up, and their NVLink generation (4 on Hopper).
                - V(0) and V(null) on a card without NVLink.
              type: dict
              sample: {active_links: 18, version: 4}
            mig_mode:
              description: MIG mode, current and pending; V(null) where the card has no MIG.
              type: dict
              sample: {current: false, pending: false}
            persistence_mode:
              description: Whether persistence mode is on.
              type: bool
              sample: true
            ecc_enabled:
              description: Whether ECC is currently on; V(null) where the card has no ECC.
              type: bool
              sample: true
            power_limit_watts:
              description: Power management limit in watts.
              type: float
              sample: 700.0
            processes:
              description: Compute processes on the card, with the memory each uses (V(null) when NVML cannot say).
              type: list
              elements: dict
              sample: [{pid: 4242, used_bytes: 1048576000}]
        pairs:
          description: Every ordered pair of different cards.
          type: list
          elements: dict
          returned: always
          contains:
            from:
              description: Index of the first card.
              type: int
              sample: 0
            to:
              description: Index of the second card.
              type: int
              sample: 1
            p2p:
              description:
                - NVML P2P status for read, write, nvlink and atomics.
                - Each is one of V(ok), V(chipset_not_supported), V(gpu_not_supported), V(topology_not_supported),
                  V(disabled_by_regkey), V(not_supported), V(unknown).
              type: dict
              sample: {read: ok, write: ok, nvlink: ok, atomics: ok}
            common_ancestor:
              description: Closest common PCIe ancestor; says nothing about NVLink.
              type: str
              choices: [internal, single, multiple, hostbridge, node, system]
              sample: hostbridge
            interconnect:
              description:
                - V(nvlink) when both cards have NVLink links up and NVLink P2P is V(ok);
                  else V(pcie_p2p) when P2P read and write are V(ok); else V(pcie_no_p2p).
              type: str
              choices: [nvlink, pcie_p2p, pcie_no_p2p]
              sample: nvlink
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.text.converters import to_native
from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError, read_bytes, writable_target
from ansible_collections.gpufleet.serving.plugins.module_utils.nvml_facts import (
    PYNVML_IMPORT_ERROR,
    REASON_NO_LIBRARY,
    SnapshotError,
    dump_snapshot,
    nvidia_gpu_facts,
)

MAX_SAVED_BYTES = 64 * 1024 * 1024


def _save(module, path, raw):
    """Write the snapshot atomically; return whether the file changed."""
    text = dump_snapshot(raw)
    try:
        if os.path.exists(path) and read_bytes(path, MAX_SAVED_BYTES, "save_snapshot") == text.encode("utf-8"):
            return False
    except InputError as exc:
        module.fail_json(msg="save_snapshot: %s; choose another path" % exc)
    if module.check_mode:
        return True
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".nvml-snapshot-", dir=directory)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        module.fail_json(msg="save_snapshot: cannot write into %s: %s; choose a writable directory" % (directory, to_native(exc)))
    module.atomic_move(tmp, os.path.abspath(path))
    return True


def main():
    module = AnsibleModule(
        argument_spec=dict(
            snapshot=dict(type="path"),
            save_snapshot=dict(type="path"),
            required=dict(type="bool", default=False),
        ),
        mutually_exclusive=[("snapshot", "save_snapshot")],
        supports_check_mode=True,
    )
    if module.params["save_snapshot"]:
        try:
            writable_target(module.params["save_snapshot"], "save_snapshot", MAX_SAVED_BYTES)
        except InputError as exc:
            folder = os.path.dirname(os.path.abspath(module.params["save_snapshot"]))
            module.fail_json(msg="save_snapshot: cannot write into %s: %s" % (folder, to_native(exc)))
    try:
        facts, raw, warnings = nvidia_gpu_facts(snapshot=module.params["snapshot"])
    except SnapshotError as exc:
        module.fail_json(msg=to_native(exc))
    except (ArithmeticError, ValueError, TypeError, KeyError, AttributeError, RecursionError, MemoryError) as exc:
        # A last resort: the snapshot's shape is checked first; name the input rather than end in a traceback.
        source = "snapshot %s" % module.params["snapshot"] if module.params["snapshot"] else "NVML's readings"
        module.fail_json(msg="snapshot: reading %s stopped on an unexpected %s (%s); capture the snapshot again" % (source, type(exc).__name__, exc))
    for warning in warnings:
        module.warn("NVML refused a reading: %s" % warning)

    if not facts["available"] and module.params["required"]:
        if facts["reason"] == REASON_NO_LIBRARY:
            module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMPORT_ERROR, ansible_facts=dict(nvidia_gpus=facts))
        module.fail_json(msg="required=true and no NVIDIA GPU can be used: %s" % facts["reason"], ansible_facts=dict(nvidia_gpus=facts))

    changed = False
    if module.params["save_snapshot"]:
        if raw is None:
            module.warn("save_snapshot: nothing written to %s: %s" % (module.params["save_snapshot"], facts["reason"]))
        else:
            changed = _save(module, module.params["save_snapshot"], raw)

    module.exit_json(changed=changed, ansible_facts=dict(nvidia_gpus=facts))


if __name__ == "__main__":
    main()
