#!/bin/sh
# Build the pinhole service images with Podman, offline (no registry, no TLS inside builds).
#
#   containers/images.sh base-image   debootstrap bookworm -> localhost/pinhole-base:bookworm (skip if present)
#   containers/images.sh wheelhouse   build/wheelhouse (Python wheels, cp311 manylinux) + build/debs (nftables, conntrack, iptables)
#   containers/images.sh images       base-image + wheelhouse + one image per service (localhost/pinhole-<service>)
#                                     + localhost/pinhole-controller (the k8s/controller Job: pinhole cluster-run)
#   containers/images.sh smoke        `python -m services.<service> --help` in each image, `pinhole cluster-run
#                                     --help` in the controller's
#   containers/images.sh podman ARGS  podman with the project's configuration (containers/*.conf)
#
# Needs root and the Debian packages podman buildah runc iptables debootstrap.
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
export CONTAINERS_CONF="${CONTAINERS_CONF:-$HERE/containers.conf}"
export CONTAINERS_STORAGE_CONF="${CONTAINERS_STORAGE_CONF:-$HERE/storage.conf}"

PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
BASE_IMAGE="${BASE_IMAGE:-localhost/pinhole-base:bookworm}"
SUITE="${SUITE:-bookworm}"
WHEELHOUSE="$ROOT/build/wheelhouse"
DEBS="$ROOT/build/debs"
# Every folder under services/ with a __main__.py is a service and a Dockerfile target, but the switch: it
# impairs the namespace lab's own bridge, which container labs (engine networks) and k8s do not have.
SERVICES="${SERVICES:-$(cd "$ROOT/services" && for d in */; do [ -f "$d/__main__.py" ] && [ "$d" != switch/ ] && printf '%s ' "${d%/}"; done)}"
# Dockerfile targets that are not services: the controller (k8s/controller/job.yaml). Empty: services only.
EXTRA_TARGETS="${EXTRA_TARGETS-controller}"

# The Debian mirror the host's apt uses (the one reachable from here), else deb.debian.org.
mirror() {
    if [ -n "${MIRROR:-}" ]; then echo "$MIRROR"; return; fi
    found=$(awk '$1 == "URIs:" && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$found" ] || found=$(awk '$1 == "deb" && $0 !~ /security/ {print ($2 ~ /^\[/ ? $3 : $2); exit}' \
        /etc/apt/sources.list 2>/dev/null || true)
    echo "${found:-http://deb.debian.org/debian}"
}

base_image() {
    if podman image exists "$BASE_IMAGE"; then
        echo "base image $BASE_IMAGE exists"
        return
    fi
    rootfs=$(mktemp -d /var/tmp/pinhole-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv "$SUITE" "$rootfs" "$(mirror)" >/dev/null
    # Smaller image: no apt lists, caches, docs or man pages are needed at run time.
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | podman import --quiet - "$BASE_IMAGE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
    echo "base image $BASE_IMAGE imported"
}

wheelhouse() {
    mkdir -p "$WHEELHOUSE" "$DEBS"
    # The project's dependencies and its `lab` extra (the controller image's Kubernetes client) as CPython
    # 3.11 manylinux wheels (Debian bookworm's python3 is 3.11), plus the build backend so the image build
    # can build pinhole's own wheel without an index.
    reqs=$(cd "$ROOT" && "$PY" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print(" ".join(p["dependencies"] + p["optional-dependencies"]["lab"]))')
    # shellcheck disable=SC2086
    (cd "$ROOT" && "$PY" -m pip download -q --dest "$WHEELHOUSE" --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_34_x86_64 $reqs "setuptools>=68" wheel 2>&1 \
        | { grep -v "is neither a file nor a directory" || true; })
    # nft, conntrack and iptables (the NFQUEUE rule of the fault engine) for the natgw image: Debian packages
    # of the same suite as the base image (the host must be Debian $SUITE), their dependencies minus the
    # essential ones every base already has.
    pkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces \
        --no-enhances --no-pre-depends nftables conntrack iptables | grep '^[a-z]' | sort -u \
        | grep -vx -e libc6 -e libgcc-s1 -e gcc-12-base)
    # shellcheck disable=SC2086
    (cd "$DEBS" && apt-get download -qq -o APT::Sandbox::User=root $pkgs)
    echo "wheelhouse: $(ls "$WHEELHOUSE" | wc -l) wheels, $(ls "$DEBS" | wc -l) debs"
}

images() {
    base_image
    wheelhouse
    for target in $SERVICES $EXTRA_TARGETS; do
        start=$(date +%s)
        podman build --quiet --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" --target "$target" \
            --tag "localhost/pinhole-$target:latest" "$ROOT" >/dev/null
        echo "built localhost/pinhole-$target in $(( $(date +%s) - start )) s"
    done
    # the images these builds replaced (this store is the project's own: nothing else lives in it)
    podman image prune --force >/dev/null
    podman images --filter 'reference=localhost/pinhole-*'
}

smoke() {
    for service in $SERVICES; do
        podman run --rm --network none "localhost/pinhole-$service" python -m "services.$service" --help >/dev/null
        echo "ok localhost/pinhole-$service: python -m services.$service --help as $(podman run --rm \
            --network none "localhost/pinhole-$service" id -un)"
    done
    for target in $EXTRA_TARGETS; do
        podman run --rm --network none "localhost/pinhole-$target" pinhole cluster-run --help >/dev/null
        echo "ok localhost/pinhole-$target: pinhole cluster-run --help as $(podman run --rm --network none \
            "localhost/pinhole-$target" id -un)"
    done
}

cmd="${1:-images}"
[ $# -gt 0 ] && shift
case "$cmd" in
    base-image) base_image ;;
    wheelhouse) wheelhouse ;;
    images) images ;;
    smoke) smoke ;;
    podman) exec podman "$@" ;;
    *) echo "usage: $0 base-image|wheelhouse|images|smoke|podman ARGS" >&2; exit 2 ;;
esac
