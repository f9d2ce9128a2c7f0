#!/usr/bin/env bash
# Build (once per machine) the Kubernetes control plane the tests run against:
# kube-apiserver, kube-scheduler and kube-controller-manager from Debian bookworm's
# `kubernetes` source package (it vendors every Go dependency) with Debian's Go, plus
# Debian's etcd-server. The binaries go to a cache directory OUTSIDE the clone, keyed by
# the upstream version, guarded by a file lock so concurrent runs build it once; reruns
# find the binaries and return at once, without any network.
#
# Usage: tests/kube_build.sh            (prints the cache directory on its last line)
# Env:   SKYWARD_KUBE_CACHE             (default /var/cache/skyward-tests)
#
# Measured on a 2-core bookworm machine: ~8 min wall, ~1.4 GB peak RSS; 250 MB of
# binaries kept, the 1.8 GB source tree and Go caches removed after the build.
set -euo pipefail

KUBE_VERSION=1.20.2
CACHE_ROOT=${SKYWARD_KUBE_CACHE:-/var/cache/skyward-tests}
DEST="$CACHE_ROOT/kubernetes-$KUBE_VERSION"
BINARIES=(kube-apiserver kube-scheduler kube-controller-manager)

have_all() {
    [ -f "$DEST/.complete" ] || return 1
    for b in "${BINARIES[@]}"; do [ -x "$DEST/bin/$b" ] || return 1; done
    command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ]
}

if have_all; then
    echo "$DEST"
    exit 0
fi

mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/kubernetes-$KUBE_VERSION.lock"
echo "kube_build: waiting for the build lock $CACHE_ROOT/kubernetes-$KUBE_VERSION.lock" >&2
flock 9
if have_all; then  # another run built it while we waited
    echo "$DEST"
    exit 0
fi

# Debian packages: Go to build, rsync/jq for the code generators, etcd as the store,
# openssl for the harness's certificates. etcd-server's maintainer script would start a
# system etcd on 127.0.0.1:2379; a policy-rc.d refusal would be global, so instead stop
# it right after the install if an init system started one.
need=()
command -v go >/dev/null 2>&1 || [ -x /usr/lib/go/bin/go ] || need+=(golang-go)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v jq >/dev/null 2>&1 || need+=(jq)
[ -x /usr/bin/etcd ] || need+=(etcd-server)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v make >/dev/null 2>&1 || need+=(make)
if [ "${#need[@]}" -gt 0 ]; then
    echo "kube_build: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    service etcd stop >/dev/null 2>&1 || true
fi

bins_ok=1
for b in "${BINARIES[@]}"; do [ -x "$DEST/bin/$b" ] || bins_ok=0; done
if [ "$bins_ok" = 0 ]; then
    started=$(date +%s)
    work="$DEST/build"
    rm -rf "$work"
    mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
    # A private source list used only through apt options, so nothing global changes.
    cat >"$work/apt/sources.list" <<'EOF'
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
EOF
    apt_opts=(
        -o "Dir::Etc::SourceList=$work/apt/sources.list"
        -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/apt/lists"
        -o "Dir::Cache=$work/apt/cache"
    )
    apt-get "${apt_opts[@]}" update -qq
    (cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only -qq kubernetes)
    orig=$(ls "$work"/src/kubernetes_*.orig.tar.gz)
    echo "kube_build: building from $(basename "$orig")" >&2
    tar -xzf "$orig" -C "$work/src"
    tree=$(find "$work/src" -maxdepth 1 -type d -name "kubernetes-$KUBE_VERSION" | head -n1)
    [ -n "$tree" ] || { echo "kube_build: no kubernetes-$KUBE_VERSION in $orig" >&2; exit 1; }
    mkdir -p "$work/gopath" "$work/home"
    (
        cd "$tree"
        # The recipe the research note verified: a private GOPATH and HOME, no cgo; the
        # tree's own scripts set up vendoring. A low priority: the 2 cores are shared.
        export GOPATH="$work/gopath" HOME="$work/home" GOCACHE="$work/gocache"
        export CGO_ENABLED=0 PATH="/usr/lib/go/bin:$PATH"
        nice -n 10 make WHAT="cmd/kube-apiserver cmd/kube-scheduler cmd/kube-controller-manager"
    )
    mkdir -p "$DEST/bin"
    for b in "${BINARIES[@]}"; do
        install -m 0755 "$tree/_output/bin/$b" "$DEST/bin/$b.tmp"
        mv "$DEST/bin/$b.tmp" "$DEST/bin/$b"
    done
    rm -rf "$work"
    echo "kube_build: built in $(( $(date +%s) - started )) s" >&2
fi
"$DEST/bin/kube-apiserver" --version >&2
touch "$DEST/.complete"
echo "$DEST"
