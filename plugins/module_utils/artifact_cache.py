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
import json
import os
import re
import struct

MANIFEST_VERSION = 1
_CHUNK = 1 << 20
# PEP 427: {distribution}-{version}(-{build tag})?-{python tag}-{abi tag}-{platform tag}.whl
_WHEEL_RE = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


class ArtifactError(ValueError):
    """An artifact set that cannot be served as it is."""


def normalize_project(name):
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_wheel_filename(filename):
    """(normalised project, version) of a wheel file name, or ArtifactError."""
    match = _WHEEL_RE.match(os.path.basename(filename))
    if not match:
        raise ArtifactError("%s is not a wheel file name (PEP 427)" % filename)
    return normalize_project(match.group("name")), match.group("version")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _walk(root):
    """Relative paths of the regular files under root, sorted; hidden entries skipped."""
    found = []
    for here, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            full = os.path.join(here, name)
            if os.path.isfile(full):
                found.append(os.path.relpath(full, root))
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
    check of files already verified).
    """
    problems = []
    for rel, entry in sorted(manifest["files"].items()):
        path = os.path.join(root, rel)
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


def manifest_from_hub_listing(listing, patterns=None):
    """A model manifest from the Hugging Face API's model info with blobs
    (GET /api/models/<repo>/revision/<rev>?blobs=true): sizes of every file,
    sha256 of the LFS ones; only files matching one of patterns when given."""
    siblings = listing.get("siblings")
    if not isinstance(siblings, list) or not siblings:
        raise ArtifactError("the repository listing has no files (siblings); was it fetched with ?blobs=true?")
    files = {}
    for sibling in siblings:
        name = sibling.get("rfilename")
        if not name:
            raise ArtifactError("a listing entry has no rfilename: %r" % (sibling,))
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        lfs = sibling.get("lfs") or {}
        size = lfs.get("size", sibling.get("size"))
        if size is None:
            raise ArtifactError("%s has no size in the listing; was it fetched with ?blobs=true?" % name)
        entry = {"size": int(size)}
        if lfs.get("sha256"):
            entry["sha256"] = lfs["sha256"]
        files[name] = entry
    if not files:
        raise ArtifactError("no file of the repository listing matches %s" % ", ".join(patterns or []))
    manifest = {"version": MANIFEST_VERSION, "kind": "model", "files": files}
    if listing.get("id"):
        manifest["repo_id"] = listing["id"]
    if listing.get("sha"):
        manifest["revision"] = listing["sha"]
    return manifest


def safetensors_layout(path):
    """(tensor data bytes, expected file size) from a safetensors header."""
    with open(path, "rb") as handle:
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
    except ValueError as exc:
        raise ArtifactError("%s: safetensors header is not JSON (%s)" % (path, exc)) from exc
    data = 0
    end = 0
    for name, info in tensors.items():
        if name == "__metadata__":
            continue
        start, stop = info["data_offsets"]
        data += stop - start
        end = max(end, stop)
    return data, 8 + header_len + end


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
    index_path = os.path.join(root, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as handle:
            index = json.load(handle)
        named = sorted(set((index.get("weight_map") or {}).values()))
        for shard in named:
            if shard not in data_by_shard and not any(p.startswith(shard + ":") for p in problems):
                problems.append("model.safetensors.index.json names %s, which is not there" % shard)
        total = (index.get("metadata") or {}).get("total_size")
        if total is not None and all(s in data_by_shard for s in named):
            data = sum(data_by_shard[s] for s in named)
            if data != int(total):
                problems.append("the shards hold %d bytes of tensors, model.safetensors.index.json says %d" % (data, int(total)))
    elif not shards:
        problems.append("no *.safetensors file")
    return problems
