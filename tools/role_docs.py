"""Keep the README's role variable tables in step with meta/argument_specs.yml.

    python tools/role_docs.py          rewrite README.md between the markers
    python tools/role_docs.py --check  exit 1 when README.md is out of date

Each role gets a table between `<!-- role-vars:NAME -->` and
`<!-- /role-vars:NAME -->`. tests/unit/test_readme_role_vars.py runs --check.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARK = re.compile(r"(<!-- role-vars:(?P<role>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /role-vars:(?P=role) -->)", re.S)


def _text(value) -> str:
    if isinstance(value, list):
        value = " ".join(value)
    text = " ".join(str(value).split())
    # Ansible doc markup to Markdown: C(x), O(x), M(x) -> `x`.
    text = re.sub(r"\b[COMV]\(([^)]*)\)", r"`\1`", text)
    return text.replace("|", "\\|")


def _default(spec: dict) -> str:
    if "default" not in spec:
        return "required" if spec.get("required") else "(unset)"
    value = spec["default"]
    if value in ("", [], {}):
        return "`%s`" % ('""' if value == "" else ("[]" if value == [] else "{}"))
    if isinstance(value, (list, dict)):
        return "`%s`" % yaml.safe_dump(value, default_flow_style=True).strip()
    return "`%s`" % str(value).replace("|", "\\|")


def role_table(role: str) -> str:
    specs = yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"].get("options", {})
    rows = ["| variable | type | default | description |", "| --- | --- | --- | --- |"]
    for name, spec in options.items():
        kind = spec.get("type", "str")
        if kind == "list" and "elements" in spec:
            kind = "list of %s" % spec["elements"]
        if spec.get("choices"):
            kind += " (%s)" % ", ".join(str(c) for c in spec["choices"])
        rows.append("| `%s` | %s | %s | %s |" % (name, kind, _default(spec), _text(spec.get("description", ""))))
    return "\n".join(rows) + "\n"


def render(readme: str) -> str:
    return MARK.sub(lambda m: m.group(1) + role_table(m.group("role")) + m.group(4), readme)


def main() -> int:
    current = README.read_text()
    wanted = render(current)
    if "--check" in sys.argv[1:]:
        if current != wanted:
            print("README.md role variables are out of date: run python tools/role_docs.py")
            return 1
        return 0
    README.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
