#!/bin/sh
# Installs what the build and the tests need on a Debian 12 host, without
# touching the host's apt sources or upgrading its packages. Idempotent: each
# step is skipped when its result is already there.
set -eu
CACHE=${AURORA_CACHE:-/var/cache/aurora-image}
UV_VERSION=0.13.9
MKOSI_SERIES=25.3
mkdir -p "$CACHE"

host_packages="qemu-system-x86 qemu-utils openssh-server openssh-client rsync git curl
  python3-venv zstd e2fsprogs dosfstools mtools cpio apt debian-archive-keyring ovmf"
missing=""
for pkg in $host_packages; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    echo "setup: installing host packages:$missing"
    apt-get update -qq || echo "setup: apt-get update reported errors; trying the install anyway"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

# mkosi is not on PyPI and bookworm's is too old: unpack trixie's pure-Python
# .deb into the cache, using a private apt list so the host stays bookworm.
mkosi_dir="$CACHE/mkosi-$MKOSI_SERIES"
if [ ! -d "$mkosi_dir/usr/lib/python3/dist-packages/mkosi" ]; then
    echo "setup: fetching mkosi $MKOSI_SERIES from Debian trixie"
    apt_dir="$CACHE/apt-trixie"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/parts" "$apt_dir/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
        > "$apt_dir/sources.list"
    opts="-o Dir::Etc::SourceList=$apt_dir/sources.list -o Dir::Etc::SourceParts=$apt_dir/parts
          -o Dir::State::Lists=$apt_dir/lists -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache=
          -o APT::Sandbox::User=root"
    # shellcheck disable=SC2086
    apt-get $opts update -qq
    version=$(apt-cache $opts show mkosi | sed -n 's/^Version: //p' | head -n1)
    case "$version" in
        "$MKOSI_SERIES"*) ;;
        *) echo "setup: trixie offers mkosi $version, expected $MKOSI_SERIES.x" >&2; exit 1 ;;
    esac
    (cd "$apt_dir/archives" && apt-get $opts download "mkosi=$version")
    rm -rf "$mkosi_dir.tmp"
    dpkg-deb -x "$apt_dir/archives/mkosi_${version}_all.deb" "$mkosi_dir.tmp"
    mv "$mkosi_dir.tmp" "$mkosi_dir"
fi

# uv, pinned, in its own venv built from Debian's python (PyPI is reachable,
# GitHub is not, so uv must never try to download a Python).
if [ ! -x "$CACHE/uvboot/bin/uv" ] || ! "$CACHE/uvboot/bin/uv" --version | grep -q " $UV_VERSION"; then
    echo "setup: installing uv $UV_VERSION"
    rm -rf "$CACHE/uvboot"
    /usr/bin/python3 -m venv "$CACHE/uvboot"
    "$CACHE/uvboot/bin/pip" --isolated install --quiet "uv==$UV_VERSION"
fi
