# Copyright: (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test fleet's connection: containers.podman's podman connection, with pipelining.

containers.podman's plugin runs `podman exec` without `-i`, so a module cannot be
piped to the container's Python and every task costs four `podman exec` calls
(make a temporary folder, make the module executable, run it, remove the
folder). This subclass keeps standard input open when Ansible pipes a module
(`podman exec -i`), which makes it one call. Only the test fleet and the demo's
local fleet use it; real servers are reached over SSH, which pipelines already.
"""

from __future__ import annotations

DOCUMENTATION = r"""
name: podman_pipelined
short_description: Run tasks in a local podman container, modules piped to its Python
description:
  - containers.podman.podman with pipelining: a module is sent on standard input to one C(podman exec -i).
  - For the collection's local test fleet (podman containers booting systemd); not part of the collection.
author: gpufleet.serving contributors
options:
  remote_addr:
    description: The container's name or ID.
    default: inventory_hostname
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_podman_host
  remote_user:
    description: User in the container that runs the commands (root when unset).
    vars:
      - name: ansible_user
  podman_extra_args:
    description: Arguments added to every podman command.
    default: ''
    vars:
      - name: ansible_podman_extra_args
  podman_executable:
    description: The podman program.
    default: podman
    vars:
      - name: ansible_podman_executable
  pipelining:
    description: Pipe modules to the container's Python (one C(podman exec) per module instead of four).
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PODMAN_PIPELINING
    vars:
      - name: ansible_pipelining
"""

import shlex

from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import Connection as PodmanConnection


class Connection(PodmanConnection):
    """containers.podman.podman whose exec keeps standard input open for a piped module."""

    transport = "podman_pipelined"
    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd, in_data=None, sudoable=False):
        ConnectionBase.exec_command(self, cmd, in_data=in_data, sudoable=sudoable)
        exec_args = ["exec"]
        if in_data is not None:
            exec_args.append("-i")
        if self.user:
            exec_args.extend(("--user", self.user))
        return self._podman(exec_args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
