#!/bin/bash
# Proves the README's quick start (`make image`, then `make test`) on a fresh
# Debian 12 root, so nothing installed by hand on this machine can hide a
# missing install step. Used by .ci/run and `make pristine`.
#
# - The base root is Debian 12 minbase plus what a user needs to follow the
#   README at all (make, git, CA certificates), made with mmdebstrap and kept
#   as a tarball keyed by that package list; every run unpacks a new copy.
# - The repository goes in as a clone of HEAD: only committed work is tested.
# - Only build caches are carried in from $AURORA_CACHE (mkosi's incremental
#   cache, package and wheel downloads, git mirrors) plus the root's own apt
#   downloads; tools (mkosi, uv) and host packages are installed by
#   `make setup` inside the root, every time.
# - The root is entered with pivot_root in private mount and PID namespaces:
#   the kernel refuses user namespaces (mkosi's sandbox) to a chrooted process,
#   and whatever a test leaves running dies with the namespace.
set -euo pipefail

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
cache=${AURORA_CACHE:-/var/cache/aurora-image}
ci=${AURORA_CI_CACHE:-/var/cache/aurora-ci}
keep=${AURORA_CI_KEEP:-}
# What runs in the root: the README's two commands (another only to debug this script).
command=${AURORA_CI_COMMAND:-make image && make test}
suite=bookworm
mirror=http://deb.debian.org
base_packages="make,git,ca-certificates"
# Caches that hold downloads and mkosi's incremental state, never installed tools.
# debstore: the .debs by sha256 that a locked build installs from (builder.image.debrepo).
carried="mkosi-cache mkosi-pkgs uv git apt-trixie/archives debstore"

# The machine's network settings (proxies, the CA bundle its TLS egress needs)
# are the machine's, not installed software: the root gets them as a new
# machine of this kind would have them.
network_env=()
while IFS= read -r line; do network_env+=("$line"); done < <(
    env | grep -E '^(SSL_CERT_(FILE|DIR)|REQUESTS_CA_BUNDLE|CURL_CA_BUNDLE|PIP_CERT|GIT_SSL_CAINFO|(HTTPS?|NO|ALL)_PROXY|(https?|no|all)_proxy)=' || true)

inside() {
    # PID 1 of the new namespaces: mount the root, pivot into it, run the README.
    local root=$1
    mount --make-rprivate /
    mount --bind "$root" "$root"
    mount --rbind /dev "$root/dev"
    mount -t proc proc "$root/proc"
    mount --rbind /sys "$root/sys"
    mount -t tmpfs -o mode=0755 tmpfs "$root/run"
    mkdir -p "$root/run/lock"
    for dir in $carried; do
        mkdir -p "$cache/$dir" "$root/var/cache/aurora-image/$dir"
        mount --bind "$cache/$dir" "$root/var/cache/aurora-image/$dir"
    done
    # Builds inside and outside share mkosi's cache, so they share its lock too.
    touch "$cache/build.lock" "$root/var/cache/aurora-image/build.lock"
    mount --bind "$cache/build.lock" "$root/var/cache/aurora-image/build.lock"
    mount --bind "$ci/apt-archives" "$root/var/cache/apt/archives"
    cd "$root"
    mkdir -p .oldroot
    pivot_root . .oldroot
    umount -l /.oldroot
    rmdir /.oldroot
    cd /src
    exec /usr/bin/env -i HOME=/root LANG=C.UTF-8 TERM="${TERM:-dumb}" CI=1 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${network_env[@]}" \
        /bin/bash -c "$command"
}

if [ "${1:-}" = --inside ]; then
    inside "$2"
fi

[ "$(id -u)" = 0 ] || { echo "pristine-check: run as root (it makes a root file system)" >&2; exit 2; }
command -v mmdebstrap >/dev/null || {
    echo "pristine-check: installing mmdebstrap on this machine (the check's only host dependency)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mmdebstrap
}
mkdir -p "$ci/apt-archives/partial" "$cache"

key=$(printf '%s\n' "$suite" "$base_packages" minbase | sha256sum | cut -c1-16)
base="$ci/base-$suite-$key.tar"
if [ ! -f "$base" ]; then
    echo "pristine-check: making the Debian 12 base root ($base_packages)"
    mmdebstrap --quiet --variant=minbase --include="$base_packages" "$suite" "$base.tmp" \
        "deb $mirror/debian $suite main" \
        "deb $mirror/debian $suite-updates main" \
        "deb $mirror/debian-security $suite-security main"
    mv "$base.tmp" "$base"
fi

run=$(mktemp -d /var/tmp/aurora-pristine.XXXXXX)
cleanup() {
    # The mounts lived in the namespace and are gone with it: this removes files only.
    if [ -z "$keep" ]; then rm -rf --one-file-system "$run"; else echo "pristine-check: kept $run"; fi
}
trap cleanup EXIT
root="$run/root"
mkdir "$root"
tar -C "$root" -xf "$base"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
if [ -d /usr/local/share/ca-certificates ]; then
    cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null
fi
[ -s "$root/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
git clone --quiet --no-hardlinks "$repo" "$root/src"
echo "pristine-check: $(git -C "$root/src" log -1 --format='%h %s') in $root"

start=$(date +%s)
status=0
unshare --mount --pid --fork --kill-child -- "$0" --inside "$root" || status=$?
echo "pristine-check: exit $status after $(( $(date +%s) - start )) s"
if [ "$status" != 0 ] && [ -z "$keep" ]; then
    # The root goes; the logs of what failed (build, serial, smoke, Glance) stay.
    logs="$ci/logs/$(date -u +%Y%m%dT%H%M%SZ)"
    (cd "$root" && find src/images var/cache/aurora-image/release-test tmp -name '*.log' -size -64M \
        -exec cp --parents -t "$(mkdir -p "$logs" && echo "$logs")" {} + 2>/dev/null) || true
    echo "pristine-check: logs of this run kept in $logs"
fi
exit "$status"
