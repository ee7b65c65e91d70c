#!/bin/sh
# Installs what the build and the tests need on a Debian 12 host, without
# touching the host's apt sources or upgrading its packages. Idempotent: each
# step is skipped when its result is already there.
set -eu
CACHE=${AURORA_CACHE:-/var/cache/aurora-image}
UV_VERSION=0.13.9
MKOSI_SERIES=25.3
mkdir -p "$CACHE"

# Every program (or file) the build and the tests use on this host, and the
# Debian package that provides it; `make setup` installs these packages.
# tests/unit/test_setup_host.py scans the code for the programs it runs and fails
# when one is missing here (programs of Essential packages excepted: every Debian
# root has them), or when a package here does not provide what its row names.
# "-": a package needed as a whole, with no one file to name.
# for: "image" rows are what building an image needs (`make image` runs
# `setup-host.sh image`, so a fresh machine fetches no QEMU, browser or nginx
# before its first build); "test" rows come with `make setup` and the test targets.
programs='
# program or file                    package                 for    used by
python3                              python3-minimal         image  mkosi, the uv bootstrap below
-                                    python3-venv            image  the uv bootstrap below (python3 -m venv)
apt-get                              apt                     image  mkosi (tools tree, packages)
apt-cache                            apt                     image  tests/unit/image/test_debrepo.py (the locked repository, read by apt)
dpkg-deb                             dpkg                    image  builder/image/debstore.py, builder/image/debrepo.py, tests
/usr/share/keyrings/debian-archive-keyring.gpg debian-archive-keyring  image  mkosi, the trixie apt list below
zstd                                 zstd                    image  mkosi
cpio                                 cpio                    image  mkosi (initrd)
mkfs.vfat                            dosfstools              image  mkosi (ESP)
mcopy                                mtools                  image  mkosi (ESP)
git                                  git                     image  the app source (builder/image/build.py)
qemu-system-x86_64                   qemu-system-x86         test   builder/vm/machine.py, smoke and release suites
qemu-img                             qemu-utils              test   builder/vm/disks.py, release (qcow2)
qemu-io                              qemu-utils              test   tests/release
/usr/share/OVMF/OVMF_CODE_4M.fd      ovmf                    test   builder/vm/image.py (UEFI firmware)
mkfs.ext4                            e2fsprogs               image  builder/vm/disks.py (scratch volumes), verify
debugfs                              e2fsprogs               image  builder/image/verify.py, tests
dumpe2fs                             e2fsprogs               image  builder/image/verify.py
e2label                              e2fsprogs               image  tests/unit/vm/test_vm_disks.py
fsck.erofs                           erofs-utils             image  builder/image/verify.py (the EROFS root)
dump.erofs                           erofs-utils             image  builder/image/verify.py
mkfs.erofs                           erofs-utils             image  builder/image/layer.py (the config layer), tests/unit/image/test_verify.py
veritysetup                          cryptsetup-bin          image  builder/image/layer.py (dm-verity of the config layer)
ssh                                  openssh-client          test   builder/host/remote.py, on-host programs, tests
ssh-keygen                           openssh-client          test   builder/vm/machine.py, builder/release/signing.py, tests
ssh-keyscan                          openssh-client          test   builder/host/probe.py (host keys on the console)
sshd                                 openssh-server          test   tests/sshd.py, tests/peers.py (real sshd)
rsync                                rsync                   test   on-host programs and their tests
nginx                                nginx                   test   tests/unit/host/test_release_probe.py
openssl                              openssl                 test   tests/unit/host/test_release_probe.py
systemd-analyze                      systemd                 image  tests/unit/spec/test_systemd_values.py, test_least_privilege.py
systemd-nspawn                       systemd-container       test   builder/image/root.py (the container tier, tests/container)
mount                                mount                   image  builder/image/root.py (the image tree, read-only loop mounts)
umount                               mount                   image  builder/image/root.py
chromium                             chromium                test   tests/vm/test_security.py (the Panel page under its CSP)
chromedriver                         chromium-driver         test   tests/vm/test_security.py (WebDriver for that browser)
make                                 make                    image  the entry points, tests/unit/image/test_image_choice.py
'
case "${1:-all}" in
    image) wanted='$3 == "image"' ;;
    all) wanted='1' ;;
    *) echo "setup: usage: setup-host.sh [image]" >&2; exit 2 ;;
esac
host_packages=$(printf '%s\n' "$programs" | sed 's/#.*//' | awk "NF >= 3 && $wanted {print \$2}" | sort -u)
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
