# Copyright: (c) 2025, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet artifact cache: manifests of wheels and model files, their checks,
and what the cache serves from them (a PEP 503 index and a hash-pinned
requirements file).

Plain functions over files and dicts, so that unit tests feed them real
directories. A manifest is a dict:

    {"kind": "wheels" | "model",
     "files": {"<relative path>": {"size": int, "sha256": "<hex>"}, ...}}

For models, "sha256" may be missing for a file whose repository listing gives
only a size (files kept in git, not LFS): the size is then what is checked.
"""

from __future__ import annotations

import fnmatch
import hashlib
import html
import ipaddress
import json
import os
import re
import stat
import struct
import time

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
# Bounds on what is read or trusted: a manifest, a listing or an index file is
# at most this large, lists this many files, and no file is larger than 16 TiB.
MAX_JSON_BYTES = 64 << 20
MAX_FILES = 100000
MAX_FILE_SIZE = 1 << 44
MAX_NAME = 1024
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
# One path component of a served file: no separator, no whitespace, no control
# or shell character, not hidden (the cache skips hidden files; the clients
# keep their temporary files under hidden names).
_COMPONENT_RE = re.compile(r"^[A-Za-z0-9_+=@,-][A-Za-z0-9._+=@,-]{0,254}$")
# PEP 427: {distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl,
# each part in the characters PEP 427 and PEP 440 allow.
_WHEEL_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.]+)-(?P<version>[A-Za-z0-9_.+!]+)(-\d[A-Za-z0-9_.]*)?-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+\.whl$")


class ArtifactError(ValueError):
    """An artifact set that cannot be served as it is."""


def normalize_project(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_filename(filename):
    """(normalised project, version) of a wheel file name, or ArtifactError."""
    if not isinstance(filename, str) or not _WHEEL_RE.match(filename) or len(filename) > 255:
        raise ArtifactError("%r is not a wheel file name (PEP 427: name-version-python-abi-platform.whl, no path)" % (filename,))
    match = _WHEEL_RE.match(filename)
    return normalize_project(match.group("name")), match.group("version")


def check_name(name, what="file name"):
    """name as a relative path confined to its directory, or ArtifactError.

    Components of letters, digits and ._+=@,- only (so no '..', no absolute
    path, no backslash, whitespace or control character, nothing hidden).
    """
    if not isinstance(name, str) or not name:
        raise ArtifactError("%s %r is not a non-empty string" % (what, name))
    if len(name) > MAX_NAME:
        raise ArtifactError("%s %r... is longer than %d characters" % (what, name[:40], MAX_NAME))
    for part in name.split("/"):
        if part in ("", ".", "..") or not _COMPONENT_RE.match(part):
            raise ArtifactError(
                "%s %r is refused: each part of a path must be letters, digits or ._+=@,- and not start with '.'"
                " (no '..', no absolute path, no whitespace or control character)" % (what, name)
            )
    return name


def confined_path(root, name, what="file name"):
    """The real path of name under root, refused when it (or a link on its way) leads out of root."""
    check_name(name, what)
    base = os.path.realpath(root)
    full = os.path.realpath(os.path.join(base, name))
    if os.path.commonpath([base, full]) != base or full == base:
        raise ArtifactError("%s %r leads out of %s (through a symbolic link)" % (what, name, root))
    return full


def check_sha256(value, what):
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise ArtifactError("%s must be a sha256 of 64 lowercase hex digits, not %r" % (what, value))
    return value


def _check_size(value, what):
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_FILE_SIZE:
        raise ArtifactError("%s must be a whole number of bytes from 0 to %d, not %r" % (what, MAX_FILE_SIZE, value))
    return value


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open_regular(path, what):
    """An open binary handle on path, a regular file (a FIFO or device is refused, never waited on)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise ArtifactError("%s %s cannot be read: %s" % (what, path, exc.strerror or exc)) from exc
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError("%s %s is not a regular file" % (what, path))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def parse_json(raw, what):
    """JSON of raw bytes, bounded in size and depth, or ArtifactError."""
    if len(raw) > MAX_JSON_BYTES:
        raise ArtifactError("%s is larger than %d bytes" % (what, MAX_JSON_BYTES))
    try:
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError("%s is not JSON: %s" % (what, exc)) from exc
    except RecursionError as exc:
        raise ArtifactError("%s is nested too deeply" % what) from exc


def read_json(path, what="JSON file"):
    """JSON of a regular file of at most MAX_JSON_BYTES."""
    with _open_regular(path, what) as handle:
        raw = handle.read(MAX_JSON_BYTES + 1)
    return parse_json(raw, "%s %s" % (what, path))


def validate_manifest(data, kind, require_sha256=False, what="the manifest"):
    """A manifest checked in shape, names, sizes and hashes, or ArtifactError naming the entry.

    Wheels must be wheel file names (no path); model files relative paths
    confined to the model directory.
    """
    if kind not in ("wheels", "model"):
        raise ArtifactError("kind must be wheels or model, not %r" % (kind,))
    if not isinstance(data, dict):
        raise ArtifactError("%s is a JSON %s, not an object with kind and files" % (what, type(data).__name__))
    if data.get("kind") != kind:
        raise ArtifactError("%s is a manifest of %r, not %s" % (what, data.get("kind"), kind))
    files = data.get("files")
    if not isinstance(files, dict) or not files:
        raise ArtifactError("%s has no files (an object of name: {size, sha256})" % what)
    if len(files) > MAX_FILES:
        raise ArtifactError("%s lists %d files, more than %d" % (what, len(files), MAX_FILES))
    for name, entry in files.items():
        if kind == "wheels":
            parse_wheel_filename(name)
        else:
            check_name(name, "%s: file name" % what)
        if not isinstance(entry, dict):
            raise ArtifactError("%s: the entry of %s is not an object with size and sha256" % (what, name))
        _check_size(entry.get("size"), "%s: the size of %s" % (what, name))
        if "sha256" in entry or require_sha256:
            check_sha256(entry.get("sha256"), "%s: the sha256 of %s" % (what, name))
    requirements = data.get("requirements", [])
    if not isinstance(requirements, list) or not all(isinstance(r, str) for r in requirements):
        raise ArtifactError("%s: requirements must be a list of strings" % what)
    return data


def _walk(root):
    """Relative paths of the regular files under root, sorted; hidden entries skipped.

    A symbolic link is followed only when it stays under root; one that leads
    out of it is refused, so that nothing outside the cache is recorded or served.
    """
    base = os.path.realpath(root)
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in list(dirs) + files:
            if name.startswith("."):
                continue
            full = os.path.join(here, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([base, target]) != base:
                    raise ArtifactError("%s is a symbolic link out of %s (to %s)" % (os.path.relpath(full, root), root, target))
        for name in files:
            full = os.path.join(here, name)
            if not name.startswith(".") and os.path.isfile(full):
                found.append(os.path.relpath(full, root))
        if len(found) > MAX_FILES:
            raise ArtifactError("%s holds more than %d files" % (root, MAX_FILES))
    return sorted(found)


def build_manifest(root, kind, requirements=None):
    """Manifest of every file under root (wheels: every *.whl directly in root)."""
    if kind not in ("wheels", "model"):
        raise ArtifactError("kind must be wheels or model, not %r" % kind)
    if not os.path.isdir(root):
        raise ArtifactError("%s is not a directory" % root)
    paths = _walk(root)
    if kind == "wheels":
        paths = [p for p in paths if p.endswith(".whl") and "/" not in p]
        for path in paths:
            parse_wheel_filename(path)
    else:
        for path in paths:
            check_name(path, "%s: file name" % root)
    if not paths:
        raise ArtifactError("%s holds no %s" % (root, "wheels" if kind == "wheels" else "files"))
    manifest = {
        "version": MANIFEST_VERSION,
        "kind": kind,
        "files": {p: {"size": os.path.getsize(os.path.join(root, p)), "sha256": sha256_file(os.path.join(root, p))} for p in paths},
    }
    if requirements:
        manifest["requirements"] = list(requirements)
    return manifest


def manifest_bytes(manifest):
    return sum(entry["size"] for entry in manifest["files"].values())


def check_files(root, manifest, hash_files=True):
    """Problems (strings) of the files under root against the manifest; [] when they match.

    Sizes are always compared; sha256 too unless hash_files is false (a quick
    check of files already verified). Every name must stay under root.
    """
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        try:
            path = confined_path(root, rel)
        except ArtifactError as exc:
            problems.append(str(exc))
            continue
        if not os.path.isfile(path):
            problems.append("%s: missing" % rel)
            continue
        size = os.path.getsize(path)
        if size != entry["size"]:
            problems.append("%s: %d bytes, the manifest says %d" % (rel, size, entry["size"]))
            continue
        if hash_files and entry.get("sha256") and sha256_file(path) != entry["sha256"]:
            problems.append("%s: sha256 differs from the manifest" % rel)
    return problems


def fill_sha256(root, manifest):
    """The manifest with a sha256 for every file (hashing the files that have none): the
    fleet checks every file it fetches by hash, git files of a hub repository too."""
    files = {}
    for rel, given in manifest["files"].items():
        entry = dict(given)
        if not entry.get("sha256"):
            entry["sha256"] = sha256_file(confined_path(root, rel))
        files[rel] = entry
    return dict(manifest, files=files)


def manifest_text(manifest):
    """The manifest as the cache writes and serves it (its sha256 is what the fleet pins)."""
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def _wheel_projects(manifest):
    projects = {}
    for filename in sorted(manifest["files"]):
        project, version = parse_wheel_filename(filename)
        projects.setdefault(project, []).append((version, filename))
    return projects


def requirements_lock(manifest):
    """A requirements file pinning every wheel by version and sha256 (pip --require-hashes).

    Fails when one project has wheels of two versions: pip would have to
    choose, and the fleet must install exactly one set.
    """
    lines = [
        "# Every wheel the fleet installs, pinned by version and sha256.",
        "# Made by gpufleet.serving.artifact_cache from the cache's manifest.",
    ]
    for project, versions in sorted(_wheel_projects(manifest).items()):
        distinct = sorted({version for version, dummy in versions})
        if len(distinct) > 1:
            raise ArtifactError(
                "the wheel set holds %s in versions %s (%s): remove the stale wheels so that one version is left"
                % (project, ", ".join(distinct), ", ".join(name for dummy, name in versions))
            )
        hashes = " ".join("--hash=sha256:%s" % manifest["files"][name]["sha256"] for dummy, name in versions)
        lines.append("%s==%s %s" % (project, distinct[0], hashes))
    return "\n".join(lines) + "\n"


def _page(title, links):
    body = "\n".join('    <a href="%s">%s</a><br/>' % (html.escape(href, quote=True), html.escape(text)) for href, text in links)
    head = '<head><meta name="pypi:repository-version" content="1.0"><title>%s</title></head>' % html.escape(title)
    return "<!DOCTYPE html>\n<html>\n  %s\n  <body>\n%s\n  </body>\n</html>\n" % (head, body)


def simple_index(manifest, wheels_url):
    """PEP 503 pages {relative path: html}: simple/index.html and simple/<project>/index.html.

    Each link carries #sha256=<hex>, wheels_url is where the wheel files are
    served (absolute path or URL, ending in /).
    """
    if not wheels_url.endswith("/"):
        wheels_url += "/"
    projects = _wheel_projects(manifest)
    pages = {"index.html": _page("Simple index", [(p + "/", p) for p in sorted(projects)])}
    for project, versions in projects.items():
        links = [("%s%s#sha256=%s" % (wheels_url, name, manifest["files"][name]["sha256"]), name) for dummy, name in versions]
        pages["%s/index.html" % project] = _page("Links for %s" % project, links)
    return pages


# --- models -------------------------------------------------------------------


def _listed_name(sibling):
    """The file name of one entry of a Hugging Face listing, checked to stay inside the model directory."""
    if not isinstance(sibling, dict):
        raise ArtifactError("a listing entry is not an object: %r" % (sibling,))
    name = sibling.get("rfilename")
    if not name:
        raise ArtifactError("a listing entry has no rfilename: %r" % (sibling,))
    check_name(name, "the repository listing: file name")
    return name


def _listed_file(sibling, name):
    """The manifest entry of one listed file: its size (the LFS one first) and, for LFS files, its sha256."""
    lfs = sibling.get("lfs") or {}
    if not isinstance(lfs, dict):
        raise ArtifactError("the repository listing: lfs of %s is not an object" % name)
    size = lfs.get("size", sibling.get("size"))
    if size is None:
        raise ArtifactError("%s has no size in the listing; was it fetched with ?blobs=true?" % name)
    entry = {"size": _check_size(size, "the repository listing: the size of %s" % name)}
    if lfs.get("sha256"):
        entry["sha256"] = check_sha256(lfs["sha256"], "the repository listing: the sha256 of %s" % name)
    return entry


def manifest_from_hub_listing(listing, patterns=None):
    """A model manifest from the Hugging Face API's model info with blobs
    (GET /api/models/<repo>/revision/<rev>?blobs=true): sizes of every file,
    sha256 of the LFS ones; only files matching one of patterns when given.
    Every file name must stay inside the model directory."""
    if not isinstance(listing, dict):
        raise ArtifactError("the repository listing is a JSON %s, not an object with siblings" % type(listing).__name__)
    siblings = listing.get("siblings")
    if not isinstance(siblings, list) or not siblings:
        raise ArtifactError("the repository listing has no files (siblings); was it fetched with ?blobs=true?")
    if len(siblings) > MAX_FILES:
        raise ArtifactError("the repository listing has %d files, more than %d" % (len(siblings), MAX_FILES))
    files = {}
    for sibling in siblings:
        name = _listed_name(sibling)
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        files[name] = _listed_file(sibling, name)
    if not files:
        raise ArtifactError("no file of the repository listing matches %s" % ", ".join(patterns or []))
    manifest = {"version": MANIFEST_VERSION, "kind": "model", "files": files}
    for key, field in (("repo_id", "id"), ("revision", "sha")):
        if isinstance(listing.get(field), str) and listing[field]:
            manifest[key] = listing[field]
    return manifest


def _offsets(info, name, path):
    offsets = info.get("data_offsets") if isinstance(info, dict) else None
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= MAX_FILE_SIZE for x in offsets)
        or offsets[0] > offsets[1]
    ):
        raise ArtifactError("%s: tensor %s has no data_offsets [start, end] of whole bytes with start <= end: %r" % (path, name, offsets))
    return offsets


def safetensors_layout(path):
    """(tensor data bytes, expected file size) from a safetensors header."""
    with _open_regular(path, "safetensors file") as handle:
        raw = handle.read(8)
        if len(raw) != 8:
            raise ArtifactError("%s: shorter than a safetensors header" % path)
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > 100 * 1024 * 1024:
            raise ArtifactError("%s: safetensors header of %d bytes is not plausible" % (path, header_len))
        header = handle.read(header_len)
    if len(header) != header_len:
        raise ArtifactError("%s: truncated inside the safetensors header" % path)
    try:
        tensors = json.loads(header.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError("%s: safetensors header is not JSON (%s)" % (path, exc)) from exc
    except RecursionError as exc:
        raise ArtifactError("%s: safetensors header is nested too deeply" % path) from exc
    if not isinstance(tensors, dict):
        raise ArtifactError("%s: safetensors header is not a JSON object" % path)
    data = 0
    end = 0
    for name, info in tensors.items():
        if name == "__metadata__":
            continue
        start, stop = _offsets(info, name, path)
        data += stop - start
        end = max(end, stop)
    return data, 8 + header_len + end


def _read_index(root):
    """(shards the weight map names, total_size or None) of model.safetensors.index.json."""
    index = read_json(os.path.join(root, "model.safetensors.index.json"), "model.safetensors.index.json")
    if not isinstance(index, dict):
        raise ArtifactError("model.safetensors.index.json is not a JSON object")
    weight_map = index.get("weight_map") or {}
    metadata = index.get("metadata") or {}
    if not isinstance(weight_map, dict) or not isinstance(metadata, dict):
        raise ArtifactError("model.safetensors.index.json: weight_map and metadata must be objects")
    shards = sorted(set(weight_map.values()) if all(isinstance(v, str) for v in weight_map.values()) else [])
    if len(shards) != len(set(weight_map.values())):
        raise ArtifactError("model.safetensors.index.json: every weight_map value must be a shard file name")
    for shard in shards:
        check_name(shard, "model.safetensors.index.json: shard")
    total = metadata.get("total_size")
    if total is not None:
        _check_size(total, "model.safetensors.index.json: total_size")
    return shards, total


def check_model_layout(root):
    """Problems of a model directory on its own terms: every safetensors file
    as long as its header says, and the index's weight map and total size
    matching the shards present."""
    problems = []
    shards = sorted(p for p in _walk(root) if p.endswith(".safetensors"))
    data_by_shard = {}
    for rel in shards:
        path = os.path.join(root, rel)
        try:
            data, expected = safetensors_layout(path)
        except ArtifactError as exc:
            problems.append(str(exc).replace(path, rel))
            continue
        actual = os.path.getsize(path)
        if actual != expected:
            problems.append("%s: %d bytes, its header describes %d" % (rel, actual, expected))
        data_by_shard[rel] = data
    if os.path.lexists(os.path.join(root, "model.safetensors.index.json")):
        try:
            named, total = _read_index(root)
        except ArtifactError as exc:
            return [*problems, str(exc)]
        for shard in named:
            if shard not in data_by_shard and not any(p.startswith(shard + ":") for p in problems):
                problems.append("model.safetensors.index.json names %s, which is not there" % shard)
        if total is not None and all(s in data_by_shard for s in named):
            data = sum(data_by_shard[s] for s in named)
            if data != total:
                problems.append("the shards hold %d bytes of tensors, model.safetensors.index.json says %d" % (data, total))
    elif not shards:
        problems.append("no *.safetensors file")
    return problems


# --- the fleet's side: fetching from the cache ------------------------------------


class Deadline:
    """A point in time after which a fetch gives up (a cache that trickles bytes is not waited on forever)."""

    def __init__(self, seconds, clock=time.monotonic):
        self.clock = clock
        self.end = clock() + seconds
        self.seconds = seconds

    def check(self, what):
        if self.clock() > self.end:
            raise ArtifactError("%s: not done within %d s (the deadline); is the cache overloaded or slowed down?" % (what, self.seconds))


def read_bounded(stream, limit, deadline, what):
    """All bytes of stream, refused beyond limit bytes or past the deadline."""
    chunks, total = [], 0
    # read1 returns what has arrived, so that the deadline is checked between
    # every few bytes of a cache that trickles, not only after a whole block.
    read = getattr(stream, "read1", stream.read)
    while True:
        deadline.check(what)
        block = read(min(_CHUNK, limit + 1 - total))
        if not block:
            return b"".join(chunks)
        total += len(block)
        if total > limit:
            raise ArtifactError("%s is larger than %d bytes" % (what, limit))
        chunks.append(block)


def copy_verified(stream, handle, entry, deadline, what):
    """Copy stream into handle, hashing as it goes; ArtifactError unless exactly entry's size and sha256."""
    size, sha256 = entry["size"], entry["sha256"]
    digest, total = hashlib.sha256(), 0
    read = getattr(stream, "read1", stream.read)
    while True:
        deadline.check(what)
        block = read(min(_CHUNK, size + 1 - total))
        if not block:
            break
        total += len(block)
        if total > size:
            raise ArtifactError("%s: the cache sent more than the %d bytes the pinned manifest gives" % (what, size))
        digest.update(block)
        handle.write(block)
    if total != size:
        raise ArtifactError("%s: the cache sent %d bytes, the pinned manifest gives %d" % (what, total, size))
    if digest.hexdigest() != sha256:
        raise ArtifactError("%s: sha256 %s differs from the pinned manifest's %s" % (what, digest.hexdigest(), sha256))


def verify_pinned(raw, pinned, what):
    """raw, when its sha256 is the pinned one; otherwise ArtifactError saying so."""
    actual = sha256_bytes(raw)
    if actual != pinned:
        raise ArtifactError(
            "%s has sha256 %s, but the cache pinned %s when it was filled: it was changed on the cache or on the way;"
            " nothing was written or installed" % (what, actual, pinned)
        )
    return raw


def plan_model_fetch(root, manifest, hash_files=True):
    """[(name, real path, entry)] of the manifest's files that root lacks or holds in another
    version; ArtifactError when a name leads out of root or a non-file is in the way."""
    wanted = []
    for name, entry in sorted(manifest["files"].items()):
        path = confined_path(root, name)
        if os.path.lexists(path) and not os.path.isfile(path):
            raise ArtifactError("%s: %s is in the way and is not a regular file" % (name, path))
        if os.path.isfile(path) and os.path.getsize(path) == entry["size"] and (not hash_files or sha256_file(path) == entry["sha256"]):
            continue
        wanted.append((name, path, entry))
    return wanted


# --- who may fetch from the cache --------------------------------------------------

LOOPBACK = ["127.0.0.1", "::1"]


def parse_allow_entry(entry, what="artifact_cache_allow"):
    """An address or CIDR range in canonical form, or ArtifactError naming the entry."""
    if not isinstance(entry, str) or not entry or len(entry) > 64:
        raise ArtifactError("%s: %r is not an address or CIDR range" % (what, entry))
    try:
        network = ipaddress.ip_network(entry, strict=False)
    except ValueError as exc:
        raise ArtifactError("%s: %r is not an address or CIDR range (for example 10.0.0.0/24 or 10.0.0.7): %s" % (what, entry, exc)) from exc
    if network.prefixlen == 0:
        raise ArtifactError("%s: %r lets in every address; name the fleet's networks instead" % (what, entry))
    if network.num_addresses == 1:
        return str(network.network_address)
    return str(network)


def allow_list(explicit, host_addresses):
    """Who may fetch from the cache: loopback, and explicit (when given) or else the
    addresses of the hosts the cache serves ({host: [address, ...]}).
    Returns (sorted entries, hosts without an address)."""
    if not isinstance(explicit, list):
        raise ArtifactError("artifact_cache_allow must be a list of addresses or CIDR ranges, not %r" % (explicit,))
    entries = set(LOOPBACK)
    missing = []
    if explicit:
        entries.update(parse_allow_entry(e) for e in explicit)
    else:
        for host, addresses in sorted(host_addresses.items()):
            usable = []
            for address in addresses or []:
                try:
                    parsed = ipaddress.ip_address(address)
                except ValueError:
                    continue
                if not parsed.is_link_local and not parsed.is_unspecified:
                    usable.append(str(parsed))
            if usable:
                entries.update(usable)
            else:
                missing.append(host)
    return sorted(entries, key=lambda e: (":" in e, ipaddress.ip_network(e, strict=False))), missing
