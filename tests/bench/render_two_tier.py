"""The gateway role's two tiers rendered for one host on loopback, for a bench on a lent GPU machine.
A benchmark helper, not a test.

It renders with tests/unit/roles/test_gateway_render.py's helpers (the site model built by the
role's own filters, the role's templates rendered with Ansible's Templar, as the unit tests do):

- fleet.conf: the fleet tier of gw1 with two models routed by name in njs (gpufleet-router.js),
  "model" on gpu1 and "other" on gpu2, API keys checked, the role's default rate limit;
- server.conf: the server tier of gpu1 over two loopback instances (8001, 8002), its include of
  local-servers.conf expanded;
- api-keys.map, gpufleet-router.js; fleet-main.conf and server-main.conf (Debian 12's stock
  nginx.conf in short: the role includes its site file in that http block).

Addresses become loopback (gpu1 10.0.0.11:8000 -> 127.0.0.1:8000, gpu2 10.0.0.12:9000 ->
127.0.0.1:9000, where nothing listens), /etc/nginx/gpufleet and /var/log/nginx become @GW@ and
@GW@/log, which the device script replaces with its own folder. Run from the repository root:

    PYTHONPATH=collections .venv/bin/python tests/bench/render_two_tier.py OUTDIR
"""

from __future__ import annotations

import sys
from pathlib import Path

from ansible_collections.gpufleet.serving.tests.unit.roles import test_gateway_render as gw

MODELS = [{"name": "model", "group": "model_a"}, {"name": "other", "group": "model_b"}]
GROUPS = dict(gw.GROUPS, model_a=["gpu1"], model_b=["gpu2"])
KEY = gw.KEYS[0]

MAIN = """# Debian 12's /etc/nginx/nginx.conf in short (run as root here, no modules-enabled, one site).
user root;
worker_processes auto;
pid @GW@/{tier}.pid;
error_log @GW@/log/{tier}-main-error.log;
{modules}events {{ worker_connections 768; }}
http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    default_type application/octet-stream;
    ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log @GW@/log/{tier}-main-access.log;
    gzip on;
    client_body_temp_path @GW@/tmp/{tier}-body;
    proxy_temp_path @GW@/tmp/{tier}-proxy;
    fastcgi_temp_path @GW@/tmp/{tier}-fcgi;
    uwsgi_temp_path @GW@/tmp/{tier}-uwsgi;
    scgi_temp_path @GW@/tmp/{tier}-scgi;
    include @GW@/{tier}.conf;
}}
"""


def loopback(text):
    swaps = (("10.0.0.11:8000", "127.0.0.1:8000"), ("10.0.0.12:9000", "127.0.0.1:9000"), ("/etc/nginx/gpufleet", "@GW@"), ("/var/log/nginx", "@GW@/log"))
    for old, new in swaps:
        text = text.replace(old, new)
    return text


def main(argv):
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    fleet = gw.conf("gw1", groups=GROUPS, models=MODELS, gateway_api_keys=gw.KEYS)
    server = gw.expanded("gpu1", groups=GROUPS, models=MODELS, gateway_api_keys=gw.KEYS)
    keys = gw.render_file(gw.role_vars("gw1", gateway_api_keys=gw.KEYS), "api-keys.map.j2")
    (out / "fleet.conf").write_text(loopback(fleet))
    (out / "server.conf").write_text(loopback(server))
    (out / "api-keys.map").write_text(keys)
    (out / "gpufleet-router.js").write_text((gw.ROLE / "files" / "gpufleet-router.js").read_text())
    (out / "fleet-main.conf").write_text(MAIN.format(tier="fleet", modules="load_module @NJS@;\n"))
    (out / "server-main.conf").write_text(MAIN.format(tier="server", modules=""))
    (out / "api-key.txt").write_text(KEY + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
