#!/usr/bin/env bash
# Builds the container images from binaries already built (make build):
#
#   mnemosyne/pd:TAG          mnemo-pd, pd-ctl
#   mnemosyne/node:TAG        mnemo-node, mnemo-cli, pd-ctl
#   mnemosyne/prometheus:TAG  Debian's prometheus, deploy/prometheus/{prometheus,alerts}.yml
#
# No registry is needed: every image is FROM scratch
# (deploy/docker/Dockerfile.{pd,node,prometheus}) and holds the binaries,
# exactly the shared libraries ldd lists for them (the dynamic loader
# included) and Debian's static busybox (a shell, and wget for health
# checks). Missing Debian packages (busybox-static, prometheus) are
# installed when running as root.
#
# Environment: MNEMO_BIN_DIR (the binaries; default as the Makefile's),
# IMAGE_TAG (default dev).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${MNEMO_BIN_DIR:-${CARGO_TARGET_DIR:-$HOME/.cache/mnemosyne/target}/release}
TAG=${IMAGE_TAG:-dev}
BUSYBOX=/bin/busybox
PROMETHEUS=/usr/bin/prometheus
PROMETHEUS_YML=deploy/prometheus/prometheus.yml
# Its rule_files, by the same name next to it in the image.
PROMETHEUS_RULES=deploy/prometheus/alerts.yml

die() { echo "build-images: $*" >&2; exit 1; }

# need FILE PACKAGE: installs PACKAGE if FILE is missing (root only).
need() {
  [ -x "$1" ] && return
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "$1 is missing: apt-get install $2"
  fi
  echo "installing $2"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
}
need "$BUSYBOX" busybox-static
need "$PROMETHEUS" prometheus
command -v docker >/dev/null || die "docker is missing (apt-get install docker.io)"
command -v objcopy >/dev/null || die "objcopy is missing (apt-get install binutils)"
# Debian's busybox package (not -static) puts a dynamic busybox in the same place.
ldd "$BUSYBOX" >/dev/null 2>&1 && die "$BUSYBOX is not static: apt-get install busybox-static"
[ -f "$PROMETHEUS_YML" ] || die "$PROMETHEUS_YML is missing"
[ -f "$PROMETHEUS_RULES" ] || die "$PROMETHEUS_RULES is missing"
for b in mnemo-pd mnemo-node mnemo-cli pd-ctl; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing: make build first"
done

CTX=$(mktemp -d)
trap 'rm -rf "$CTX"' EXIT

# libs BINARY: the absolute paths of the shared libraries the binary loads,
# the dynamic loader among them; nothing for a static binary.
libs() {
  local out
  if ! out=$(ldd "$1" 2>&1); then
    case "$out" in *"not a dynamic executable"*) return ;; *) die "ldd $1: $out" ;; esac
  fi
  if grep -q 'not found' <<<"$out"; then die "ldd $1: a library is missing: $out"; fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
  # "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
  awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$out"
}

# stage IMAGE BINARY...: the context of IMAGE: in rootfs/, the binaries under
# /bin, their libraries (files, not symlinks) at the paths ldd gives, busybox.
stage() {
  local root=$CTX/$1/rootfs
  shift
  mkdir -p "$root/bin"
  install -m 0755 "$BUSYBOX" "$root/bin/busybox"
  for b in "$@"; do
    # Without their DWARF line tables (20x the code: ~25 MB instead of
    # ~430 MB per binary); the symbols stay, so a panic's backtrace still
    # names its functions.
    objcopy --strip-debug "$b" "$root/bin/$(basename "$b")"
    for lib in $(libs "$b"); do
      mkdir -p "$root$(dirname "$lib")"
      cp -L "$lib" "$root$lib"
    done
  done
}

stage pd "$BIN/mnemo-pd" "$BIN/pd-ctl"
stage node "$BIN/mnemo-node" "$BIN/mnemo-cli" "$BIN/pd-ctl"
stage prometheus "$PROMETHEUS"
mkdir -p "$CTX/prometheus/rootfs/etc/prometheus"
cp "$PROMETHEUS_YML" "$CTX/prometheus/rootfs/etc/prometheus/prometheus.yml"
cp "$PROMETHEUS_RULES" "$CTX/prometheus/rootfs/etc/prometheus/alerts.yml"

for target in pd node prometheus; do
  image=mnemosyne/$target:$TAG
  old=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
  # The legacy builder prints a deprecation notice when buildx is absent.
  docker build -q --force-rm -f "deploy/docker/Dockerfile.$target" -t "$image" "$CTX/$target" \
    2> >(grep -v -i 'legacy builder\|buildx\|^ *$' >&2) >/dev/null
  new=$(docker image inspect -f '{{.Id}}' "$image")
  # A rebuild leaves the previous image untagged: remove it (unless in use).
  if [ -n "$old" ] && [ "$old" != "$new" ]; then docker rmi "$old" >/dev/null 2>&1 || true; fi
  size=$(docker image inspect -f '{{.Size}}' "$image")
  files=$(cd "$CTX/$target" && find . -type f ! -name busybox ! -name '*.yml' -printf '%f\n' | sort | tr '\n' ' ')
  printf '%-30s %s %4d MB  %s\n' "$image" "${new:7:12}" $((size / 1000000)) "$files"
done
