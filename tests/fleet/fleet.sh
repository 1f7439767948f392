#!/usr/bin/env bash
# The local fleet: Debian 12 hosts with systemd as PID 1, as podman containers.
# Used by `make demo`, `make fleet-image` and every molecule scenario, so that
# they all share one image and one podman configuration.
#
#   fleet.sh conf              write the podman configuration (runc, ulimits)
#   fleet.sh image             build the image unless it exists
#   fleet.sh up [--vllm] NAME... start hosts (idempotent) on the fleet network;
#                              --vllm starts them from the image holding vLLM
#   fleet.sh down NAME...      remove hosts (all fleet hosts when none named)
#   fleet.sh status            list fleet hosts and their systemd state
#   fleet.sh env               print the environment to export (CONTAINERS_CONF)
#   fleet.sh vllm-image        build the image with vLLM's CPU build (needs the wheel cache)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GPUFLEET_CACHE:-$ROOT/.cache}
IMAGE=${GPUFLEET_IMAGE:-localhost/gpufleet-debian:12}
VLLM_IMAGE=${GPUFLEET_VLLM_IMAGE:-localhost/gpufleet-vllm:12}
WHEELHOUSE=$CACHE/wheelhouse
NETWORK=${GPUFLEET_NETWORK:-gpufleet}
LABEL=gpufleet.fleet=1
CONF=$CACHE/podman/containers.conf
MIRROR=${GPUFLEET_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf 'fleet: %s\n' "$*" >&2; }

write_conf() {
  mkdir -p "$(dirname "$CONF")"
  local nofile nproc
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(cat /proc/sys/kernel/pid_max)
  # crun refuses this machine's hybrid cgroup layout; podman's default ulimits
  # exceed what root may set here. Written outside /etc on purpose.
  cat > "$CONF.tmp" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
runtime = "runc"
CONF
  if ! cmp -s "$CONF.tmp" "$CONF" 2>/dev/null; then mv "$CONF.tmp" "$CONF"; else rm -f "$CONF.tmp"; fi
  export CONTAINERS_CONF=$CONF
}

build_image() {
  write_conf
  if podman image exists "$IMAGE"; then
    log "image $IMAGE exists (make clean removes it)"
    return 0
  fi
  local rootfs
  rootfs=$(mktemp -d "${TMPDIR:-/tmp}/gpufleet-rootfs.XXXXXX")
  trap 'rm -rf "$rootfs"' RETURN
  mkdir -p "$CACHE/debootstrap"
  log "debootstrap bookworm into $rootfs"
  debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" \
    --include=systemd,systemd-sysv,dbus,python3,python3-apt,python3-packaging,python3-venv,iproute2,procps,sudo,ca-certificates,curl,libnuma1,gnupg \
    bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; return 1; }
  # Trust the build machine's local CAs (a TLS-intercepting proxy, a private mirror).
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
    chroot "$rootfs" update-ca-certificates >/dev/null 2>&1
  fi
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
  mkdir -p "$rootfs/var/lib/apt/lists/partial"
  # Empty, old lists: apt's cache_valid_time must see them as stale.
  touch -d @0 "$rootfs/var/lib/apt/lists" "$rootfs/var/lib/apt/lists/partial"
  : > "$rootfs/etc/machine-id"
  # Units that wait for a network that containers never "configure" slow boots.
  rm -f "$rootfs"/etc/systemd/system/multi-user.target.wants/systemd-networkd.service
  tar -C "$rootfs" -c . | podman import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENV container=podman' - "$IMAGE" >/dev/null
  log "built $IMAGE"
}

vllm_image_tag() {
  # The image is rebuilt whenever what installs vLLM changes.
  cat "$ROOT/tests/fleet/vllm-image.yml" "$ROOT/roles/vllm/tasks/install.yml" \
      "$ROOT/roles/vllm/defaults/main.yml" "$ROOT/roles/vllm/vars/main.yml" \
    | sha256sum | cut -c1-12
}

build_vllm_image() {
  build_image
  local tag
  tag="${VLLM_IMAGE%:*}:$(vllm_image_tag)"
  if podman image exists "$tag"; then
    podman tag "$tag" "$VLLM_IMAGE"
    log "image $VLLM_IMAGE ($tag) exists"
    return 0
  fi
  [ -d "$WHEELHOUSE" ] || { log "no wheel cache at $WHEELHOUSE (make wheelhouse)"; return 1; }
  local name=gpufleet-vllm-build
  podman rm -f "$name" >/dev/null 2>&1 || true
  podman run -d --name "$name" --systemd=always --cap-add SYS_ADMIN \
    -v "$WHEELHOUSE:/srv/wheelhouse:ro" "$IMAGE" >/dev/null
  wait_running "$name"
  log "installing vLLM's CPU build with the vllm role"
  if ! (cd "$ROOT" && .venv/bin/ansible-playbook -i "$name," -c podman_pipelined \
      -e ansible_python_interpreter=/usr/bin/python3 tests/fleet/vllm-image.yml) >"$CACHE/vllm-image.log" 2>&1; then
    tail -30 "$CACHE/vllm-image.log"; podman rm -f "$name" >/dev/null; return 1
  fi
  podman stop -t 10 "$name" >/dev/null
  podman commit -q --change 'CMD ["/lib/systemd/systemd"]' "$name" "$tag" >/dev/null
  podman tag "$tag" "$VLLM_IMAGE"
  podman rm -f "$name" >/dev/null
  log "built $VLLM_IMAGE"
}

ensure_network() {
  podman network exists "$NETWORK" || podman network create "$NETWORK" >/dev/null
}

up() {
  local image=$IMAGE name
  if [ "${1:-}" = --vllm ]; then
    shift
    build_vllm_image
    image=$VLLM_IMAGE
  else
    build_image
  fi
  ensure_network
  local mounts=()
  # The fleet installs Python packages from the control node's wheel cache.
  [ -d "$WHEELHOUSE" ] && mounts=(--volume "$WHEELHOUSE:/srv/wheelhouse:ro")
  for name in "$@"; do
    if podman container exists "$name"; then
      podman start "$name" >/dev/null
    else
      podman run -d --name "$name" --hostname "$name" --network "$NETWORK" \
        --label "$LABEL" --systemd=always --cap-add SYS_ADMIN --shm-size=1g \
        "${mounts[@]}" "$image" >/dev/null
    fi
  done
  for name in "$@"; do wait_running "$name"; done
}

wait_running() {
  local state=""
  for _ in $(seq 1 60); do
    state=$(podman exec "$1" systemctl is-system-running 2>/dev/null || true)
    case "$state" in running|degraded) log "$1: $state"; return 0 ;; esac
    sleep 1
  done
  log "$1 did not boot (state: ${state:-unknown})"
  return 1
}

down() {
  write_conf
  local names=("$@")
  if [ ${#names[@]} -eq 0 ]; then
    mapfile -t names < <(podman ps -a --filter "label=$LABEL" --format '{{.Names}}')
  fi
  [ ${#names[@]} -eq 0 ] || podman rm -f -t 5 "${names[@]}" >/dev/null
  if [ $# -eq 0 ] && podman network exists "$NETWORK"; then
    podman network rm "$NETWORK" >/dev/null 2>&1 || true
  fi
}

status() {
  write_conf
  local name
  for name in $(podman ps --filter "label=$LABEL" --format '{{.Names}}'); do
    printf '%-12s %-10s %s\n' "$name" \
      "$(podman exec "$name" systemctl is-system-running 2>/dev/null || true)" \
      "$(podman inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$name")"
  done
}

cmd=${1:-}
shift || true
case "$cmd" in
  conf) write_conf; echo "$CONF" ;;
  env) write_conf; echo "export CONTAINERS_CONF=$CONF" ;;
  image) build_image ;;
  vllm-image) build_vllm_image ;;
  up) [ $# -gt 0 ] || { echo "usage: fleet.sh up NAME..." >&2; exit 2; }; write_conf; up "$@" ;;
  down) down "$@" ;;
  status) status ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
