"""The shared nginx plumbing of the gateway and artifact_cache roles (role nginx_common).

The validator script is rendered with Ansible's Templar, as the role installs
it, but with the live configuration directory pointed at a scratch tree, and
then run for real against a fake ``nginx`` that reads the staged copy the way
``nginx -t`` does (includes, globs, an unknown directive) and refuses a staged
file that still names the live tree. The callers' side is checked from their
YAML: one script path, the handlers imported, every notification on the topic
the shared handlers listen to. molecule/vllm (artifact_cache) and
molecule/site (gateway) run it all with a real nginx.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar
from ansible_collections.gpufleet.serving.tests.unit.ansible_compat import load_trusted, trust_as_template

ROOT = Path(__file__).resolve().parents[3]
ROLE = ROOT / "roles" / "nginx_common"
CALLERS = {"gateway": "_gateway_validate", "artifact_cache": "_artifact_cache_validate"}
TOPIC = "Test and reload nginx"
LOADER = DataLoader()

# A stand-in for `nginx -t -q -c FILE`: follows include lines (globs as nginx
# expands them), stops at an unknown directive or a missing include with
# nginx's wording, and logs the main file it was given.
FAKE_NGINX = """\
import glob
import os
import re
import sys
from pathlib import Path

args = sys.argv[1:]
if args[:3] != ["-t", "-q", "-c"] or len(args) != 4:
    sys.exit("fake nginx: unexpected arguments %r" % args)
live = os.environ["FAKE_NGINX_LIVE"]


def check(path):
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if live + "/" in line:
            sys.exit("fake nginx: %s:%d still names the live %s" % (path, number, live))
        words = line.split()
        if words and words[0] == "broken_directive;":
            sys.exit('nginx: [emerg] unknown directive "broken_directive" in %s:%d' % (path, number))
        match = re.match(r"\\s*include\\s+(\\S+);", line)
        if match:
            pattern = match.group(1)
            found = sorted(glob.glob(pattern))
            if not found and not glob.has_magic(pattern):
                sys.exit('nginx: [emerg] open() "%s" failed (2: No such file or directory) in %s:%d' % (pattern, path, number))
            for name in found:
                check(name)


check(args[3])
with open(os.environ["FAKE_NGINX_LOG"], "a") as log:
    log.write(args[3] + "\\n")
"""


def render_script(conf_dir=None):
    variables = dict(load_trusted(LOADER, ROLE / "vars" / "main.yml"))
    if conf_dir is not None:
        variables["_nginx_common_conf_dir"] = str(conf_dir)
    variables["ansible_managed"] = "Ansible managed"
    text = (ROLE / "templates" / "nginx-validate.sh.j2").read_text()
    templar = Templar(loader=LOADER, variables=variables).copy_with_new_env(searchpath=[str(ROLE / "templates")])
    return templar.template(trust_as_template(text), escape_backslashes=False, overrides={"trim_blocks": True})


def tree(root):
    """Every entry under root: relative path -> file text, link target or 'dir'."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = path.read_text()
    return out


class Box:
    """A live nginx tree, the rendered validator and a fake nginx, under tmp_path."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.live = tmp_path / "etc" / "nginx"
        self.scratch = tmp_path / "scratch"
        self.log = tmp_path / "nginx.log"
        live = self.live
        for sub in ("conf.d", "sites-available", "sites-enabled", "snippets", "gpufleet"):
            (live / sub).mkdir(parents=True)
        (live / "nginx.conf").write_text(f"events {{}}\nhttp {{\n  include {live}/conf.d/*.conf;\n  include {live}/sites-enabled/*;\n}}\n")
        (live / "conf.d" / "other.conf").write_text("server_tokens off;\n")
        (live / "sites-available" / "default").write_text(f"include {live}/snippets/*.conf;\n")
        (live / "sites-enabled" / "default").symlink_to(live / "sites-available" / "default")
        (live / "snippets" / "headers.conf").write_text("add_header X-One 1;\n")
        (live / "gpufleet" / "api-keys.map").write_text('"k" 1;\n')
        self.scratch.mkdir()
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        nginx = bin_dir / "nginx"
        nginx.write_text("#!%s\n%s" % (sys.executable, FAKE_NGINX))
        nginx.chmod(0o755)
        self.script = bin_dir / "gpufleet-nginx-validate"
        self.script.write_text(render_script(live))
        self.script.chmod(0o755)
        self.env = dict(
            os.environ,
            PATH="%s:%s" % (bin_dir, os.environ.get("PATH", "/usr/bin:/bin")),
            TMPDIR=str(self.scratch),
            FAKE_NGINX_LIVE=str(live),
            FAKE_NGINX_LOG=str(self.log),
        )

    def candidate(self, text):
        path = self.tmp / "candidate"
        path.write_text(text)
        return path

    def run(self, *args):
        return subprocess.run([str(self.script), *map(str, args)], env=self.env, capture_output=True, text=True, timeout=30, check=False)

    def staged_runs(self):
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def box(tmp_path):
    return Box(tmp_path)


# --- the script as installed ------------------------------------------------------------
def test_rendered_script_checks_the_real_nginx_tree():
    script = render_script()
    assert script.startswith("#!/bin/sh\n#\n# Ansible managed\n#\n")
    assert "{{" not in script and "{%" not in script
    assert 'cp -RL /etc/nginx/. "$stage/"' in script
    assert 'nginx -t -q -c "$stage/nginx.conf"' in script
    assert "/etc/nginx/?*) ;;" in script


# --- the script at work ------------------------------------------------------------------
def test_good_candidate_passes_and_nothing_live_changes(box):
    before = tree(box.live)
    target = box.live / "conf.d" / "gpufleet.conf"
    done = box.run(box.candidate(f"include {box.live}/gpufleet/api-keys.map;\nproxy_buffering off;\n"), target)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert tree(box.live) == before
    (staged,) = box.staged_runs()
    assert staged.startswith(str(box.scratch) + "/") and staged.endswith("/nginx.conf")
    # The staged copy is gone afterwards.
    assert list(box.scratch.iterdir()) == []


def test_rejected_candidate_reports_nginx_words_with_live_paths(box):
    before = tree(box.live)
    target = box.live / "conf.d" / "gpufleet.conf"
    done = box.run(box.candidate("proxy_buffering off;\nbroken_directive;\n"), target)
    assert done.returncode == 1
    assert f"nginx -t rejects the new {target} (the running configuration is unchanged):" in done.stderr
    assert f'unknown directive "broken_directive" in {target}:2' in done.stderr
    assert str(box.scratch) not in done.stderr
    assert tree(box.live) == before
    assert list(box.scratch.iterdir()) == []


def test_candidate_takes_the_place_of_the_target(box):
    # The live file is broken; a candidate for that very file that mends it passes...
    (box.live / "conf.d" / "other.conf").write_text("broken_directive;\n")
    assert box.run(box.candidate("server_tokens off;\n"), box.live / "conf.d" / "other.conf").returncode == 0
    # ...while a candidate for another file is tested next to the broken one.
    done = box.run(box.candidate("server_tokens off;\n"), box.live / "conf.d" / "gpufleet.conf")
    assert done.returncode == 1
    assert f"in {box.live}/conf.d/other.conf:1" in done.stderr


def test_include_of_a_missing_file_is_refused(box):
    target = box.live / "conf.d" / "gpufleet.conf"
    done = box.run(box.candidate(f"include {box.live}/gpufleet/tls/gateway.crt;\n"), target)
    assert done.returncode == 1
    assert f'open() "{box.live}/gpufleet/tls/gateway.crt" failed' in done.stderr


def test_a_file_a_link_leads_to_is_tested_in_the_copy(box):
    # sites-enabled/default links to sites-available/default, which includes
    # snippets/*.conf: a broken snippet is found only if the link's file was
    # copied and pointed at the staged snippets.
    target = box.live / "snippets" / "headers.conf"
    done = box.run(box.candidate("broken_directive;\n"), target)
    assert done.returncode == 1
    assert f"in {target}:1" in done.stderr
    assert (box.live / "sites-enabled" / "default").is_symlink()


def test_new_directory_of_the_target_is_made_in_the_copy_only(box):
    target = box.live / "gpufleet" / "tls" / "gateway.crt"
    assert box.run(box.candidate("-----BEGIN CERTIFICATE-----\n"), target).returncode == 0
    assert not (box.live / "gpufleet" / "tls").exists()


@pytest.mark.parametrize(
    ("target", "words"),
    [
        ("{tmp}/etc/passwd", "is not under {live}"),
        ("{live}", "is not under {live}"),
        ("{live}/", "is not under {live}"),
        ("{live}-other/x.conf", "is not under {live}"),
        ("{live}/conf.d/../../x.conf", "must not climb out with '..'"),
        ("{live}/../nginx/conf.d/x.conf", "must not climb out with '..'"),
    ],
)
def test_targets_outside_the_live_configuration_are_refused(box, target, words):
    fill = {"tmp": box.tmp, "live": box.live}
    done = box.run(box.candidate("server_tokens off;\n"), target.format(**fill))
    assert done.returncode == 2
    assert "gpufleet-nginx-validate: " + target.format(**fill) + " " + words.format(**fill) in done.stderr
    assert box.staged_runs() == []
    assert not (box.tmp / "etc" / "x.conf").exists() and not (box.tmp / "x.conf").exists()


def test_wrong_number_of_arguments_is_refused(box):
    done = box.run(box.candidate("server_tokens off;\n"))
    assert done.returncode == 2
    assert "usage: gpufleet-nginx-validate CANDIDATE TARGET" in done.stderr


# --- the callers ------------------------------------------------------------------------
def _yaml(path):
    return yaml.safe_load(path.read_text()) or []


def _tasks(role):
    for path in sorted((ROOT / "roles" / role / "tasks").glob("*.yml")):
        yield from _walk(_yaml(path))


def _walk(tasks):
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _walk(task.get(key, []))


def test_both_roles_install_and_name_one_script():
    paths = {_yaml(ROOT / "roles" / role / "vars" / "main.yml")[var] for role, var in CALLERS.items()}
    assert paths == {"/usr/local/libexec/gpufleet-nginx-validate"}
    for role, var in CALLERS.items():
        installs = [t for t in _tasks(role) if t.get("ansible.builtin.include_role", {}).get("name") == "gpufleet.serving.nginx_common"]
        assert [t["ansible.builtin.include_role"]["tasks_from"] for t in installs] == ["install"], role
        assert installs[0]["vars"]["nginx_common_validate"] == "{{ %s }}" % var, role
        validated = [t for t in _tasks(role) for module in t.values() if isinstance(module, dict) and "validate" in module]
        assert validated, role
        for task in validated:
            module = next(m for m in task.values() if isinstance(m, dict) and "validate" in m)
            assert module["validate"].startswith("{{ %s }} %%s " % var), (role, task["name"])


def test_roles_import_the_shared_handlers_and_notify_their_topic():
    shared = _yaml(ROLE / "handlers" / "main.yml")
    assert [h["listen"] for h in shared] == [TOPIC, TOPIC]
    assert [next(k for k in h if k.startswith("ansible.builtin.")) for h in shared] == ["ansible.builtin.command", "ansible.builtin.systemd_service"]
    for role in CALLERS:
        handlers_dir = ROOT / "roles" / role / "handlers"
        imports = [h["ansible.builtin.import_tasks"] for h in _yaml(handlers_dir / "main.yml") if "ansible.builtin.import_tasks" in h]
        assert [(handlers_dir / name).resolve() for name in imports] == [(ROLE / "handlers" / "main.yml").resolve()], role
        notified = {n for t in _tasks(role) for n in ([t["notify"]] if isinstance(t.get("notify"), str) else t.get("notify", []))}
        nginx = {n for n in notified if "nginx" in n.lower()}
        assert nginx == {TOPIC}, role


def test_the_role_refuses_to_run_on_its_own(tmp_path):
    play = tmp_path / "play.yml"
    play.write_text("- name: Use the internal role directly\n  hosts: localhost\n  gather_facts: false\n  roles: [gpufleet.serving.nginx_common]\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
    env.update(ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"), ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_CACHE_PLUGIN="memory")
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(play)]
    argv += ["-e", "ansible_python_interpreter=" + sys.executable]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    out = " ".join((done.stdout + done.stderr).split())
    assert "gpufleet.serving.nginx_common is internal to the gpufleet.serving gateway and artifact_cache roles" in out
    assert "put gpufleet.serving.gateway or gpufleet.serving.artifact_cache in the play instead" in out
