"""Every role's defaults and meta/argument_specs.yml agree, and the README shows them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(p.name for p in (ROOT / "roles").iterdir() if (p / "tasks" / "main.yml").exists())
SHAPE = ["defaults/main.yml", "vars/main.yml", "tasks/main.yml", "handlers/main.yml", "meta/main.yml", "meta/argument_specs.yml"]


def _load(role: str, rel: str):
    return yaml.safe_load((ROOT / "roles" / role / rel).read_text()) or {}


@pytest.mark.parametrize("role", ROLES)
def test_role_has_the_common_shape(role):
    for rel in SHAPE:
        assert (ROOT / "roles" / role / rel).exists(), "%s/%s" % (role, rel)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_match_argument_specs(role):
    defaults = _load(role, "defaults/main.yml")
    options = _load(role, "meta/argument_specs.yml")["argument_specs"]["main"]["options"]
    for name, value in defaults.items():
        assert name in options, "%s: %s has a default but no spec" % (role, name)
        spec = options[name]
        assert spec.get("description"), "%s: %s has no description" % (role, name)
        assert "type" in spec, "%s: %s has no type" % (role, name)
        assert spec.get("default") == value, "%s: %s default %r != spec %r" % (role, name, value, spec.get("default"))
        if spec.get("choices"):
            assert value in spec["choices"], "%s: default of %s not among its choices" % (role, name)
    for name, spec in options.items():
        assert name.startswith(role + "_"), "%s: %s lacks the role prefix" % (role, name)
        if "default" in spec:
            assert name in defaults, "%s: %s has a spec default but none in defaults/main.yml" % (role, name)


def test_readme_role_tables_are_current():
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "role_docs.py"), "--check"], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
