#!/usr/bin/env bash
# Installs what autopatch's tests and demo need on a Debian 12 machine (run as root):
# a real Nix store (nix-bin), bubblewrap for the NixOS-like root, patchelf and binutils to
# compare against, cross compilers and qemu for other architectures, py-rattler to install
# real conda environments offline.
set -euo pipefail

packages=(
  nix-bin bubblewrap patchelf binutils file attr g++
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross
  gcc-s390x-linux-gnu libc6-dev-s390x-cross
  qemu-user
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -c 'import rattler' 2>/dev/null || python3 -m pip install -q py-rattler
