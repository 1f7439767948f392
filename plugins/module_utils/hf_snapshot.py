# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later

"""One Hugging Face repository revision downloaded once into a directory, marked done by a stamp file.

Used by the ``hf_snapshot`` module (the vllm role's ``vllm_model_source=hub``
and the artifact_cache role's hub download). ``check_inputs`` refuses what
must not reach the hub client or the file system; ``stamp_state`` says whether
an earlier run finished (the stamp is written only after the download
succeeded, so an interrupted download is resumed the next time);
``download`` fetches and writes the stamp.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.gpufleet.serving.plugins.module_utils.input_checks import InputError

# The hub's rules for a repository id: [namespace/]name, letters, digits and ._- , at most 96 each.
REPO_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# A branch, tag or commit, as git allows them in the hub's URLs (refs/pr/1 included).
REVISION_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]{0,254}$")
STAMP_RE = re.compile(r"^\.?[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
DEST_RE = re.compile(r"^(/[A-Za-z0-9._+=@,-]{1,255})+$")
MAX_PATTERNS = 256
MAX_PATTERN = 256
MAX_TIMEOUT = 7 * 24 * 3600


def check_inputs(params):
    """Refuse any input that is not what its option says, with a message that names the option and what to change."""
    repo_id, revision, dest, stamp = params["repo_id"], params["revision"], params["dest"], params["stamp"]
    if not REPO_RE.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id:
        raise InputError("repo_id %r is not a Hugging Face repository id ([namespace/]name: letters, digits and ._-, no '--' or '..')" % (repo_id,))
    if not REVISION_RE.fullmatch(revision) or ".." in revision or "//" in revision or revision.endswith("/"):
        raise InputError("revision %r is not a branch, tag or commit (letters, digits and ._/-, no '..', '//' or leading '-')" % (revision,))
    if not DEST_RE.fullmatch(dest) or os.path.normpath(dest) != dest or dest.count("/") < 2:
        raise InputError(
            "dest %r must be an absolute, normalised path at least two levels deep (no '.' or '..' parts, no trailing '/')"
            " of letters, digits and ._+=@,- (e.g. /var/lib/vllm/models/Qwen2.5-0.5B-Instruct)" % (dest,)
        )
    if not STAMP_RE.fullmatch(stamp) or stamp in (".", ".."):
        raise InputError("stamp %r must be a file name (letters, digits and ._-, no '/'), e.g. .gpufleet-complete" % (stamp,))
    _check_patterns(params["patterns"])
    timeout = params["timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise InputError("timeout must be a number of seconds above 0 and at most %d (a week), not %r" % (MAX_TIMEOUT, timeout))


def _check_patterns(patterns):
    if patterns is None:
        return
    if len(patterns) > MAX_PATTERNS:
        raise InputError("patterns lists %d patterns, more than %d" % (len(patterns), MAX_PATTERNS))
    for pattern in patterns:
        if not pattern or len(pattern) > MAX_PATTERN or not pattern.isprintable():
            raise InputError("patterns: %r is not a file pattern (1-%d printable characters, such as *.safetensors)" % (pattern[:80], MAX_PATTERN))


def stamp_state(dest, stamp, check_mode=False):
    """True when the stamp of a finished download is there; False when not; InputError when dest or the stamp is not usable.

    In check mode a missing parent directory is no error: the run before this task would have made it.
    """
    parent = os.path.dirname(dest)
    if not os.path.isdir(parent):
        if check_mode and not os.path.lexists(parent):
            return False
        raise InputError("dest %s: its parent directory %s does not exist; create it first" % (dest, parent))
    if os.path.lexists(dest):
        info = os.lstat(dest)
        if not stat.S_ISDIR(info.st_mode):
            raise InputError("dest %s exists and is not a directory (a file or a symbolic link); remove it or choose another dest" % dest)
    path = os.path.join(dest, stamp)
    if not os.path.lexists(path):
        return False
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise InputError("stamp %s is not a regular file (a directory, link or device); remove it and run again" % path)
    return True


def write_stamp(dest, stamp, text):
    """Write the stamp file (never through a symbolic link), mode 0644."""
    path = os.path.join(dest, stamp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def download(snapshot_download, params):
    """Fetch the revision into dest (the hub client resumes what an earlier run left), then write the stamp."""
    snapshot_download(repo_id=params["repo_id"], revision=params["revision"], local_dir=params["dest"], allow_patterns=params["patterns"])
    text = "%s@%s\n" % (params["repo_id"], params["revision"])
    write_stamp(params["dest"], params["stamp"], text)
    return text
