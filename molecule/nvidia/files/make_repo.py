# Copyright (c) 2026, gpufleet.serving contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Build a signed stand-in of NVIDIA's CUDA apt repository for the nvidia scenario.

Runs on the scenario's repository host (Debian 12: python3, dpkg-deb and gpg
are there; nothing is downloaded). It writes, under ROOT/<distro>/<arch>/, the
same flat layout NVIDIA serves:

    *.deb  Packages  Packages.gz  Release  InRelease  Release.gpg  3bf863cc.pub

The packages carry NVIDIA's real names, versions and source package names but
hold only a marker file, except nvidia-persistenced, which ships a systemd unit
that really runs, and nvidia-modprobe, which fails if anything runs it (the
role's device unit must be skipped on a host without a GPU). The key is made here, so its fingerprint is not NVIDIA's: it
is written to ROOT/fingerprint for the scenario to pass to the role.

usage: python3 make_repo.py ROOT
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DISTRO, ARCH, DEB_ARCH = "debian12", "x86_64", "amd64"
KEY_FILE = "3bf863cc.pub"  # where NVIDIA's repository keeps its key
KEY_UID = "gpufleet nvidia scenario <nvidia-scenario@gpufleet.invalid>"

# Two driver branches, so that the role's branch pin has something to refuse,
# and two releases of one toolkit series, for the upgrade step.
DRIVER_VERSIONS = ["580.95.05-1", "590.44.01-1"]
TOOLKIT_VERSIONS = ["12.8.0-1", "12.8.1-1"]

PERSISTENCED_UNIT = """\
[Unit]
Description=NVIDIA Persistence Daemon (gpufleet test stand-in)
Wants=syslog.target

[Service]
Type=simple
ExecStart=/usr/bin/nvidia-persistenced --verbose

[Install]
WantedBy=multi-user.target
"""

MODPROBE_BIN = """\
#!/bin/sh
# Stand-in for NVIDIA's nvidia-modprobe: this host has no GPU, nothing may run it.
echo "nvidia-modprobe stand-in: no NVIDIA GPU on this host" >&2
exit 1
"""

PERSISTENCED_BIN = """\
#!/bin/sh
# Stand-in for NVIDIA's persistence daemon: it only stays alive.
exec sleep infinity
"""


def stand_ins():
    """(control fields, {path: (mode, content)}) for every package of the repository."""
    for version in DRIVER_VERSIONS:
        driver = {"Source": "nvidia-graphics-drivers", "Version": version}
        yield {**driver, "Package": "libcuda1"}, {}
        yield {**driver, "Package": "nvidia-kernel-open-dkms"}, {}
        yield {**driver, "Package": "nvidia-kernel-dkms"}, {}
        yield {**driver, "Package": "nvidia-driver-cuda", "Depends": f"libcuda1 (= {version})"}, {}
        # The device unit runs it; on the scenario's host (no GPU) that unit must be skipped, so the stand-in fails if run.
        yield (
            {"Source": "nvidia-modprobe", "Version": version, "Package": "nvidia-modprobe"},
            {"usr/bin/nvidia-modprobe": (0o755, MODPROBE_BIN)},
        )
        yield (
            {"Source": "nvidia-persistenced", "Version": version, "Package": "nvidia-persistenced"},
            {
                "usr/bin/nvidia-persistenced": (0o755, PERSISTENCED_BIN),
                "lib/systemd/system/nvidia-persistenced.service": (0o644, PERSISTENCED_UNIT),
            },
        )
    for version in TOOLKIT_VERSIONS:
        release = version.split("-", maxsplit=1)[0]
        yield (
            {"Package": "cuda-toolkit-12-8", "Version": version},
            {"usr/local/cuda-12.8/version.json": (0o644, json.dumps({"cuda": {"version": release}}) + "\n")},
        )


def build_deb(control, files, out_dir):
    name, version = control["Package"], control["Version"]
    fields = {
        "Package": name,
        "Source": control.get("Source"),
        "Version": version,
        "Architecture": DEB_ARCH,
        "Maintainer": "gpufleet.serving contributors <nvidia-scenario@gpufleet.invalid>",
        "Depends": control.get("Depends"),
        "Description": f"stand-in for NVIDIA's {name}\n Test package of the gpufleet.serving nvidia scenario.",
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "DEBIAN").mkdir()
        text = "".join(f"{key}: {value}\n" for key, value in fields.items() if value)
        (root / "DEBIAN/control").write_text(text)
        files = dict(files)
        files.setdefault(f"usr/share/doc/{name}/STAND-IN", (0o644, f"{name} {version}: gpufleet test stand-in\n"))
        for rel, (mode, content) in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
            path.chmod(mode)
        deb = out_dir / f"{name}_{version}_{DEB_ARCH}.deb"
        subprocess.run(["dpkg-deb", "--root-owner-group", "--build", str(root), str(deb)], check=True, capture_output=True)
    return deb


def packages_index(debs, repo):
    stanzas = []
    for deb in sorted(debs):
        control = subprocess.run(["dpkg-deb", "--field", str(deb)], check=True, capture_output=True, text=True).stdout
        data = deb.read_bytes()
        stanzas.append(
            control.rstrip("\n")
            + f"\nFilename: ./{deb.relative_to(repo)}\nSize: {len(data)}\n"
            + f"MD5sum: {hashlib.md5(data).hexdigest()}\nSHA256: {hashlib.sha256(data).hexdigest()}\n"
        )
    return "\n".join(stanzas)


def release_file(repo, names):
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%a, %d %b %Y %H:%M:%S UTC")
    lines = ["Origin: gpufleet", "Label: NVIDIA CUDA stand-in", f"Architectures: {DEB_ARCH}", f"Date: {date}", "SHA256:"]
    for name in names:
        data = (repo / name).read_bytes()
        lines.append(f" {hashlib.sha256(data).hexdigest()} {len(data)} {name}")
    return "\n".join(lines) + "\n"


def gpg(home, *args, **kwargs):
    return subprocess.run(["gpg", "--batch", "--yes", "--homedir", str(home), *args], check=True, capture_output=True, text=True, **kwargs)


def main(root):
    root = Path(root)
    repo = root / DISTRO / ARCH
    home = root.parent / (root.name + "-gnupg")
    if repo.exists():
        shutil.rmtree(repo)
    repo.mkdir(parents=True)
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(mode=0o700)

    debs = [build_deb(control, files, repo) for control, files in stand_ins()]
    index = packages_index(debs, repo)
    (repo / "Packages").write_text(index)
    (repo / "Packages.gz").write_bytes(gzip.compress(index.encode()))
    (repo / "Release").write_text(release_file(repo, ["Packages", "Packages.gz"]))

    gpg(home, "--passphrase", "", "--quick-generate-key", KEY_UID, "ed25519", "sign", "never")
    gpg(home, "--clearsign", "--output", str(repo / "InRelease"), str(repo / "Release"))
    gpg(home, "--armor", "--detach-sign", "--output", str(repo / "Release.gpg"), str(repo / "Release"))
    (repo / KEY_FILE).write_text(gpg(home, "--armor", "--export").stdout)
    colons = gpg(home, "--with-colons", "--list-keys").stdout.splitlines()
    fingerprint = next(line.split(":")[9] for line in colons if line.startswith("fpr:"))
    (root / "fingerprint").write_text(fingerprint + "\n")
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    print(json.dumps({"repository": str(repo), "packages": len(debs), "fingerprint": fingerprint}))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__.strip().splitlines()[-1])
    main(sys.argv[1])
