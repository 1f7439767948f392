"""Unpack the collections the tests need from the PyPI `ansible` wheel.

Galaxy cannot be reached from CI, but PyPI can: the `ansible` package carries
every collection of the Ansible community package. Only the ones named on the
command line are extracted, into DEST/ansible_collections/<ns>/<name>.
"""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path


def extract(wheel: Path, dest: Path, names: list[str]) -> list[str]:
    prefixes = ["ansible_collections/%s/" % n.replace(".", "/") for n in names]
    found = set()
    with zipfile.ZipFile(wheel) as zf:
        for member in zf.namelist():
            for prefix in prefixes:
                if member.startswith(prefix):
                    zf.extract(member, dest)
                    found.add(prefix)
    missing = [p for p in prefixes if p not in found]
    if missing:
        raise SystemExit("not in %s: %s" % (wheel.name, ", ".join(missing)))
    return sorted(found)


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit("usage: extract_collections.py WHEEL DEST NS.NAME...")
    for prefix in extract(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]):
        print("extracted", prefix)
