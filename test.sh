#!/usr/bin/env bash
# Keel's whole test suite. Installs what the tests need on a fresh Debian 12 machine
# (apt packages, cargo-nextest), checks formatting and lints, builds every binary and
# runs every test: unit, conformance against the real etcd, multi-process and crash tests.
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(etcd-server etcd-client curl protobuf-compiler dbus genisoimage openssl dosfstools mtools grub-common gdisk busybox-static libseccomp-dev pkg-config debootstrap qemu-system-x86 qemu-utils grub-pc-bin e2fsprogs openssh-client kmod binutils iproute2)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "== installing apt packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "== installing cargo-nextest"
  cargo install --locked cargo-nextest
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
# The booted-VM tests put the release binaries into a Keel image.
echo "== build (release, for the image)"
cargo build --workspace --release --bins
echo "== tests"
cargo nextest run --workspace --no-fail-fast "$@"
