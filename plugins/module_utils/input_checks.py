# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""Bounded reading of input files and plain checks of input values, for every module.

A module reads only regular files (not FIFOs, devices or directories: a FIFO
would block it, ``/dev/zero`` would never end), checks their size with
``os.stat`` before reading them, parses JSON without ``NaN``/``Infinity`` and
refuses nesting deeper than a bound (Python's parser would otherwise raise
``RecursionError``). Every failure is an ``InputError`` whose message names the
file; the caller prefixes the option it came from.
"""

from __future__ import annotations

import json
import math
import os
import stat

# Nesting no input of this collection needs (a config.json is 3-4 levels deep).
MAX_JSON_DEPTH = 64
MIB = 1024 * 1024


class InputError(ValueError):
    """A file or value that cannot be used; the message says which and why."""


def is_int(value, low=None, high=None):
    """True for an int (not a bool) within [low, high] where they are given."""
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def is_number(value, low=None, high=None):
    """True for a finite int or float (not a bool) within [low, high] where they are given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        if not math.isfinite(value):
            return False
    except OverflowError:  # an int too large for a float
        return False
    return (low is None or value >= low) and (high is None or value <= high)


def regular_file(path, max_bytes, what="file"):
    """The size of ``path`` after checking it is a regular file (links followed) of at most ``max_bytes``."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise InputError("%s %s cannot be read: %s" % (what, path, exc.strerror or exc)) from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise InputError("%s %s is %s; give a regular file" % (what, path, kind))
    if info.st_size > max_bytes:
        raise InputError("%s %s holds %d bytes, more than the %d this module reads; is it the right file?" % (what, path, info.st_size, max_bytes))
    return info.st_size


def read_bytes(path, max_bytes, what="file", offset=0, length=None):
    """Up to ``length`` bytes (default all) of a regular file no bigger than ``max_bytes``."""
    regular_file(path, max_bytes, what)
    try:
        with open(path, "rb") as handle:
            if offset:
                handle.seek(offset)
            return handle.read(max_bytes + 1 if length is None else min(length, max_bytes + 1))
    except OSError as exc:
        raise InputError("%s %s cannot be read: %s" % (what, path, exc.strerror or exc)) from None


def _no_constant(name):
    raise ValueError("%s is not a number JSON allows" % name)


def json_depth_ok(value, max_depth=MAX_JSON_DEPTH):
    """True when ``value`` nests lists and objects at most ``max_depth`` deep (checked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return True


def loads_json(data, what="input", max_depth=MAX_JSON_DEPTH, constants=False):
    """Parse JSON text or bytes strictly: UTF-8, nesting at most ``max_depth``, no NaN or Infinity unless ``constants``.

    With ``constants`` (a Hugging Face config.json may hold them) NaN and Infinity
    parse as floats, and the caller's type checks refuse them where a number is used.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputError("%s is not UTF-8 text: %s" % (what, exc)) from None
    try:
        value = json.loads(data) if constants else json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise InputError("%s nests JSON deeper than %d levels" % (what, max_depth)) from None
    except ValueError as exc:
        raise InputError("%s is not readable JSON (%s)" % (what, exc)) from None
    if not json_depth_ok(value, max_depth):
        raise InputError("%s nests JSON deeper than %d levels" % (what, max_depth))
    return value


def load_json(path, max_bytes, what="file", max_depth=MAX_JSON_DEPTH, constants=False):
    """The JSON content of a regular file of at most ``max_bytes``, parsed as ``loads_json`` does."""
    return loads_json(read_bytes(path, max_bytes, what), "%s %s" % (what, path), max_depth, constants)


def writable_target(path, what="file", max_bytes=64 * MIB):
    """Check that ``path`` can be written as a regular file: its folder exists, and it is absent or a regular file."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise InputError("%s %s: the folder %s does not exist (or is not a folder); create it first or choose another path" % (what, path, folder))
    if os.path.lexists(path):
        if os.path.islink(path) and not os.path.exists(path):
            raise InputError("%s %s is a dangling symbolic link; remove it or choose another path" % (what, path))
        regular_file(path, max_bytes, what)
