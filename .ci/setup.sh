#!/usr/bin/env bash
# Make this machine able to run the whole test suite without a Docker engine or Docker Hub:
# wrk and valgrind (the benchmark's own tests), Debian's podman/buildah/skopeo, a Python base image made
# with debootstrap, and a docker-registry on the loopback interface. Runs as root, or as a
# user with passwordless sudo (GitHub's `runner`): the image lands in that user's podman
# store.
#
# Idempotent: every step checks first, so a rerun takes a few seconds. `nox -s test` runs
# it first when CI=true.
#
#   .ci/setup.sh
#
# Environment (all optional):
#   BASE_IMAGE      image name of the local base      (localhost/python-base:3.11)
#   DEBIAN_MIRROR   where debootstrap fetches from    (the first Debian mirror apt uses)
#   REGISTRY_PORT   loopback registry port            (5000)
#   CACHE_DIR       debootstrap tarball cache         (~/.cache/onnx-ship/container)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BASE_IMAGE="${BASE_IMAGE:-localhost/python-base:3.11}"
REGISTRY_PORT="${REGISTRY_PORT:-5000}"
CACHE_DIR="${CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/onnx-ship/container}"
SUITE=bookworm  # Debian 12: python3 is 3.11, what the service needs (>=3.11)
BASE_PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
# Each host package and what it puts on the machine: a package counts as present when that
# is there. GitHub's ubuntu-24.04 has runc from Docker's containerd.io, which Ubuntu's runc
# package would replace (and Docker with it).
declare -A HOST_PACKAGES=(
  [podman]=podman
  [buildah]=buildah
  [skopeo]=skopeo
  [runc]=runc
  [uidmap]=newuidmap
  [debootstrap]=debootstrap
  [debian-archive-keyring]=/usr/share/keyrings/debian-archive-keyring.gpg
  [docker-registry]=docker-registry
  [wrk]=wrk
  [valgrind]=valgrind
  [catatonit]=/usr/libexec/podman/catatonit
)
# The registry's directory is its user's own: another user's run (root's, say) leaves one
# behind that this user could not write to.
REGISTRY_DIR="${TMPDIR:-/tmp}/onnx-ship-registry-$(id -un)"

log() { printf '[setup] %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

# -- 1. host packages -------------------------------------------------------------------
present() {  # present <command or absolute path>
  case "$1" in
    /*) [ -e "$1" ] ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$1" > /dev/null ;;
  esac
}
missing=()
for package in "${!HOST_PACKAGES[@]}"; do
  present "${HOST_PACKAGES[$package]}" || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# -- 2. podman settings ----------------------------------------------------------------
install_config() {  # install_config <file> <destination>: only when it changed
  if ! cmp -s "$1" "$2"; then
    if [ -f "$2" ] && [ ! -f "$2.orig" ]; then as_root cp "$2" "$2.orig"; fi
    as_root install -D -m 0644 "$1" "$2"
    log "wrote $2"
  fi
}
install_config "$here/containers.conf" /etc/containers/containers.conf
registries_conf="$(mktemp)"
sed "s/@REGISTRY@/127.0.0.1:${REGISTRY_PORT}/" "$here/registries.conf" > "$registries_conf"
install_config "$registries_conf" /etc/containers/registries.conf.d/50-onnx-ship-loopback.conf
rm -f "$registries_conf"

# -- 3. base image: Debian minbase + python3, no docs ----------------------------------
debian_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then echo "$DEBIAN_MIRROR"; return; fi
  # The deb822 `URIs:` or one-line `deb URI suite` entry apt already uses for Debian itself.
  local found
  found="$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | sed -n -e 's#^URIs:[[:space:]]*\(https\?://[^[:space:]]*/debian\)/\?$#\1#p' \
             -e 's#^deb[[:space:]]\+\(https\?://[^[:space:]]*/debian\)/\?[[:space:]].*#\1#p' \
    | head -n 1 || true)"
  echo "${found:-http://deb.debian.org/debian}"
}

if podman image exists "$BASE_IMAGE"; then
  log "base image $BASE_IMAGE is present"
else
  key="$(printf '%s %s' "$SUITE" "$BASE_PACKAGES" | sha256sum | cut -c1-12)"
  tarball="$CACHE_DIR/python-base-$SUITE-$key.tar"
  if [ ! -s "$tarball" ]; then
    mirror="$(debian_mirror)"
    rootfs="$(mktemp -d /tmp/onnx-ship-rootfs.XXXXXX)"
    chmod 0755 "$rootfs"  # the image's /: mktemp's 0700 shuts a non-root user out of every path
    trap 'as_root rm -rf "$rootfs"' EXIT
    mkdir -p "$CACHE_DIR"
    log "debootstrap $SUITE minbase + $BASE_PACKAGES from $mirror"
    as_root debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror" \
      > "$CACHE_DIR/debootstrap.log" 2>&1 \
      || { tail -n 20 "$CACHE_DIR/debootstrap.log" >&2; exit 1; }
    # What a slim image leaves out; the dpkg rule keeps later apt installs just as slim.
    as_root sh -c "rm -rf '$rootfs'/usr/share/doc/* '$rootfs'/usr/share/man/* \
      '$rootfs'/usr/share/info/* '$rootfs'/usr/share/locale/* '$rootfs'/var/cache/apt/* \
      '$rootfs'/var/lib/apt/lists/* '$rootfs'/var/log/*.log '$rootfs'/var/cache/debconf/*-old"
    as_root tee "$rootfs/etc/dpkg/dpkg.cfg.d/01-slim" > /dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
EOF
    as_root tar --numeric-owner -C "$rootfs" -cf "$tarball.part" .
    as_root chown "$(id -u):$(id -g)" "$tarball.part"
    mv "$tarball.part" "$tarball"
  fi
  log "importing $tarball as $BASE_IMAGE"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_IMAGE" > /dev/null
fi
# Proves the runtime settings work here (rlimits, cgroups) before any test relies on them.
version="$(podman run --rm --network none "$BASE_IMAGE" python -c 'import platform; print(platform.python_version())')"
log "base image $BASE_IMAGE runs Python $version"

# -- 4. loopback registry ----------------------------------------------------------------
registry="127.0.0.1:$REGISTRY_PORT"
if python3 -c "import urllib.request, sys; urllib.request.urlopen('http://$registry/v2/', timeout=2)" 2>/dev/null; then
  log "registry already answers at http://$registry"
else
  mkdir -p "$REGISTRY_DIR/data"
  sed -e "s#@ADDR@#$registry#" -e "s#@STORAGE@#$REGISTRY_DIR/data#" "$here/registry.yml" \
    > "$REGISTRY_DIR/config.yml"
  nohup docker-registry serve "$REGISTRY_DIR/config.yml" > "$REGISTRY_DIR/registry.log" 2>&1 &
  echo $! > "$REGISTRY_DIR/pid"
  for _ in $(seq 50); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://$registry/v2/', timeout=1)" 2>/dev/null; then
      break
    fi
    sleep 0.1
  done
  python3 -c "import urllib.request; urllib.request.urlopen('http://$registry/v2/', timeout=2)" \
    || { log "docker-registry did not start; see $REGISTRY_DIR/registry.log"; exit 1; }
  log "registry started at http://$registry (pid $(cat "$REGISTRY_DIR/pid"), stop: kill \$(cat $REGISTRY_DIR/pid))"
fi
echo "BASE_IMAGE=$BASE_IMAGE"
echo "LOCAL_REGISTRY=$registry"
