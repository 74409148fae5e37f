#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Sets up what the test suite needs on a fresh Debian machine, then returns: Debian packages,
# a Docker engine, the bridge image, and the cached assets later suites use. `npm test` runs it
# first, so the README's test command passes as it is; `.ci/run` calls exactly `npm test`.
# Idempotent and quick when everything is there already (a few `command -v` checks).
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[prepare] %s\n' "$*" >&2; }

# One Debian package per line: the command (or file) that proves it is there, then the package.
# Keep the list sorted by package so that concurrent additions merge cleanly.
need_apt=()
want() { # want CHECK PACKAGE: CHECK is a command name, or an absolute path that must exist.
  local check=$1 pkg=$2
  if [[ $check == /* ]]; then [[ -e $check ]] && return 0; else command -v "$check" >/dev/null && return 0; fi
  need_apt+=("$pkg")
}
want /bin/busybox busybox-static
want cpio cpio
want dockerd docker.io
want gcc gcc
want gdb gdb
want /usr/include/stdio.h libc6-dev
# The well-known types (google/protobuf/*.proto) the Python example's protoc imports: only a
# Recommends of protobuf-compiler, which --no-install-recommends leaves out.
want /usr/include/google/protobuf/descriptor.proto libprotobuf-dev
want /usr/share/doc/linux-image-amd64 linux-image-amd64
want openssl openssl
want qemu-system-x86_64 qemu-system-x86
want protoc protobuf-compiler
want grpc_python_plugin protobuf-compiler-grpc
want /usr/lib/python3/dist-packages/grpc python3-grpcio
want socat socat

if ((${#need_apt[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing Debian packages: ${need_apt[*]} (run this script as root, or install them)"
    exit 1
  fi
  log "installing Debian packages: ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >&2
fi

# A Docker engine, unless one answers already (no systemd on these machines).
if ! docker info >/dev/null 2>&1; then
  log "starting dockerd"
  (dockerd >/var/log/dockerd.log 2>&1 &)
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && break
    sleep 1
  done
  if ! docker info >/dev/null 2>&1; then
    log "dockerd did not come up; the end of /var/log/dockerd.log:"
    tail -n 40 /var/log/dockerd.log >&2 || true
    exit 1
  fi
fi

# The bridge image, built from this checkout on a base made of this machine's Node runtime (no
# image can be pulled here); rebuilt only when its inputs change.
npm run --silent image:local >&2

# The real Linux test guest (test/guest/README.md): Debian's kernel, a busybox initramfs with the
# known workload and the kernel's symbol table; cached by content, so this is instant once built.
npx tsx test/guest/build.ts >/dev/null
