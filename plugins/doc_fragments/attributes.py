# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""The attributes most of this collection's modules share."""

from __future__ import annotations


class ModuleDocFragment:
    # Use after ansible.builtin.action_common_attributes (which describes the
    # attributes); a module states only an attribute whose support differs.
    DOCUMENTATION = r"""
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
  platform:
    platforms: posix
"""
