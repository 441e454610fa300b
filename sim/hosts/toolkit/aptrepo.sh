#!/usr/bin/env bash
# The bed's stand-in for NVIDIA's apt repository (libnvidia-container), so that role gpu_host's repository and package
# tasks run for real on the bare host gpu-d (tests/integration/test_gpu_host.py) without the outside network:
#   sim/hosts/toolkit/aptrepo.sh        build it when missing or out of date; prints its directory
# The directory has the layout of NVIDIA's repository (a flat repository per architecture, key beside it):
#   <dir>/gpgkey                        the signing key, ASCII armored (role: signed_by)
#   <dir>/deb/<arch>/                   Packages, Packages.gz, Release, InRelease, Release.gpg and the .deb
# so the role's variables point at it as at the real one (uris: <base>/deb/$(ARCH), suites: /, signed_by:
# <base>/gpgkey), served over HTTP on the hosts' bridge address by the test (file:// works too).
# The package nvidia-container-toolkit holds the stand-ins of this directory: /usr/bin/nvidia-ctk (logic in
# /usr/lib/nvidia-container-toolkit/nvidia_ctk.py) and /usr/bin/nvidia-container-runtime.
# Cached by content: .build/aptrepo/repo-<hash of this script, the stand-ins, the bed's path and the key>; a change
# builds a new one (and deletes the old). The key (GNUPGHOME .build/aptrepo/gnupg, no passphrase) is made once.
# Needs dpkg-deb, dpkg-scanpackages (dpkg-dev), gpg (gnupg): hack/setup.sh's package list.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../../.." && pwd)
B=$ROOT/.build/aptrepo
VERSION=1.17.8-1+gpufleet
mkdir -p "$B"
exec 9>"$B/.lock"
flock 9

export GNUPGHOME=$B/gnupg
if [[ ! -s $B/key.fpr ]]; then
  rm -rf "$GNUPGHOME"
  mkdir -p "$GNUPGHOME"
  chmod 700 "$GNUPGHOME"
  gpg --batch --quiet --passphrase '' --quick-gen-key \
    'gpufleet test bed apt repository <aptrepo@gpufleet.invalid>' ed25519 sign never 2>/dev/null
  gpg --batch --with-colons --list-secret-keys | awk -F: '$1 == "fpr" { print $10; exit }' >"$B/key.fpr.tmp"
  mv "$B/key.fpr.tmp" "$B/key.fpr"
fi
fpr=$(cat "$B/key.fpr")
arch=$(dpkg --print-architecture)

hash=$(cat "$0" "$HERE/nvidia-ctk" "$HERE/nvidia_ctk.py" "$HERE/nvidia-container-runtime" <(echo "$ROOT $fpr $arch") |
  sha256sum | cut -c1-16)
repo=$B/repo-$hash
if [[ -s $repo/deb/$arch/InRelease ]]; then
  echo "$repo"
  exit 0
fi

tmp=$(mktemp -d "$B/build.XXXX")
trap 'rm -rf "$tmp"; gpgconf --kill gpg-agent 2>/dev/null || true' EXIT
pkg=$tmp/pkg
mkdir -p "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/nvidia-container-toolkit" "$tmp/repo/deb/$arch"
install -m 0755 "$HERE/nvidia-ctk" "$HERE/nvidia-container-runtime" "$pkg/usr/bin/"
# Outside the repository the logic cannot find the bed's stand-in device nodes from its own path: write it in.
sed "s|^DEV = .*|DEV = \"$ROOT/.build/engine/dev\"|" "$HERE/nvidia_ctk.py" >"$pkg/usr/lib/nvidia-container-toolkit/nvidia_ctk.py"
grep -q "^DEV = \"$ROOT/" "$pkg/usr/lib/nvidia-container-toolkit/nvidia_ctk.py"
cat >"$pkg/DEBIAN/control" <<EOF
Package: nvidia-container-toolkit
Version: $VERSION
Architecture: $arch
Maintainer: gpufleet test bed <aptrepo@gpufleet.invalid>
Section: utils
Priority: optional
Description: NVIDIA Container Toolkit (gpufleet test-bed stand-in)
 nvidia-ctk (CDI spec for the host's fake GPUs) and nvidia-container-runtime (runc),
 built by sim/hosts/toolkit/aptrepo.sh for role gpu_host's integration test.
EOF
dpkg-deb --root-owner-group -Zgzip --build "$pkg" "$tmp/repo/deb/$arch/nvidia-container-toolkit_${VERSION}_$arch.deb" >/dev/null

cd "$tmp/repo/deb/$arch"
dpkg-scanpackages --multiversion . /dev/null 2>/dev/null >Packages
gzip -9nc Packages >Packages.gz
{
  echo "Origin: gpufleet test bed"
  echo "Label: nvidia-container-toolkit (stand-in of NVIDIA's libnvidia-container repository)"
  echo "Date: $(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S UTC')"
  echo "Architectures: $arch"
  echo "SHA256:"
  for f in Packages Packages.gz; do printf ' %s %s %s\n' "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")" "$f"; done
} >Release
gpg --batch --yes --quiet --local-user "$fpr" --clearsign -o InRelease Release
gpg --batch --yes --quiet --local-user "$fpr" --armor --detach-sign -o Release.gpg Release
gpg --batch --armor --export "$fpr" >"$tmp/repo/gpgkey"
chmod -R a+rX "$tmp/repo"

rm -rf "$B"/repo-*
mv "$tmp/repo" "$repo"
echo "$repo"
