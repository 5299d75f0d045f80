# syntax=docker/dockerfile:1
# The pinhole services as container images: one final target per folder under services/
# (useragent, proxy, natgw, stunserver), each run as
#   python -m services.<name> --name N --grpc unix:/path.sock ...   (see pinhole/controller/services.py)
# plus `controller`, the image of the Kubernetes Job that runs `pinhole cluster-run` (k8s/controller).
#
# Offline build (no registry, no TLS inside the build): `make images`, i.e. containers/images.sh, which
# makes a debootstrap base image, fills build/wheelhouse (cp311 manylinux wheels) and build/debs (nftables,
# conntrack, iptables), then runs per service (and for the controller)
#   podman build --network none --build-arg BASE_IMAGE=localhost/pinhole-base:bookworm \
#       --target <service> -t localhost/pinhole-<service> .
# Elsewhere the default base is the public Debian bookworm Python image; the wheelhouse is still required.
# The base image must be Debian bookworm with python3 3.11 and python3-venv.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# ---- build: a virtual environment with pinhole and services, gRPC stubs generated here ----
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheelhouse
COPY build/wheelhouse/ /wheelhouse/
COPY pyproject.toml README.md /src/
RUN python3 -m venv /opt/pinhole \
    && /opt/pinhole/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/requirements.txt \
    && /opt/pinhole/bin/pip install --quiet --requirement /tmp/requirements.txt
COPY proto/ /src/proto/
COPY pinhole/ /src/pinhole/
COPY services/ /src/services/
WORKDIR /src
# The stubs are gitignored (make proto on a host): generate them from the .proto files of the context.
RUN rm -rf pinhole/rpc/v1 && mkdir -p pinhole/rpc/v1 \
    && /opt/pinhole/bin/python -m grpc_tools.protoc -Iproto --python_out=. --pyi_out=. --grpc_python_out=. \
        proto/pinhole/rpc/v1/*.proto \
    && touch pinhole/rpc/v1/__init__.py \
    && /opt/pinhole/bin/pip install --quiet --no-deps . \
    && /opt/pinhole/bin/python -c 'import pinhole.rpc.v1.natgw_pb2_grpc, pinhole.lab, services'

# ---- runtime-base: the unprivileged user every image runs as (the environment comes next) ----
FROM ${BASE_IMAGE} AS runtime-base
RUN groupadd --gid 10001 pinhole \
    && useradd --no-log-init --uid 10001 --gid pinhole --home-dir /var/lib/pinhole --create-home \
        --shell /usr/sbin/nologin pinhole \
    && install -d -o pinhole -g pinhole /run/pinhole
ENV PATH=/opt/pinhole/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /var/lib/pinhole

# ---- runtime: the environment, shared by every service ----
FROM runtime-base AS runtime
COPY --from=build /opt/pinhole /opt/pinhole
# gRPC sockets go to /run/pinhole: mount a volume there to reach them from the host or other containers (no
# VOLUME instruction: every container started without that mount would leave an anonymous volume behind).

FROM runtime AS useragent
USER 10001:10001
CMD ["python", "-m", "services.useragent", "--help"]

FROM runtime AS proxy
USER 10001:10001
CMD ["python", "-m", "services.proxy", "--help"]

FROM runtime AS stunserver
USER 10001:10001
CMD ["python", "-m", "services.stunserver", "--help"]

# natgw loads an nftables ruleset, reads conntrack and feeds its fault engine's NFQUEUE from an iptables-nft
# rule: it needs the nft, conntrack and iptables programs (Debian packages nftables, conntrack and iptables,
# installed here from build/debs, the .deb wheelhouse that containers/images.sh downloads on a bookworm host;
# packages the base already has are skipped) and, at run time only, the capability NET_ADMIN in its own
# network namespace:
#   podman run --cap-add NET_ADMIN localhost/pinhole-natgw python -m services.natgw ...
# The process still runs as the unprivileged user: the capabilities are granted to it through ambient
# capabilities of the runtime (podman adds --cap-add to the ambient set of a non-root user).
FROM runtime AS natgw
COPY build/debs/ /tmp/debs/
# hadolint ignore=DL3008
RUN set -e; set --; \
    for deb in /tmp/debs/*.deb; do \
        dpkg -s "$(dpkg-deb --field "$deb" Package)" >/dev/null 2>&1 || set -- "$@" "$deb"; \
    done; \
    if [ $# -gt 0 ]; then apt-get install --yes --no-install-recommends "$@"; fi; \
    rm -rf /tmp/debs /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    nft --version && conntrack --version && iptables-nft --version
USER 10001:10001
CMD ["python", "-m", "services.natgw", "--help"]

# ---- controller: `pinhole cluster-run`, the k8s/controller Job. The services' environment plus the
# `lab` extra of pyproject.toml (the Kubernetes client, which finds the lab's pods), from the same
# wheelhouse. The whole environment is built in a stage of its own and copied once onto runtime-base:
# copied over the services' runtime it would ship twice. (Not RUN --mount=from=build: buildah before 1.29,
# e.g. bookworm's podman 4.3, could mount an empty or stale cached stage, containers/buildah#4375, #4522.)
FROM build AS controller-build
RUN /opt/pinhole/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["optional-dependencies"]["lab"]))' > /tmp/lab.txt \
    && /opt/pinhole/bin/pip install --quiet --requirement /tmp/lab.txt \
    && /opt/pinhole/bin/python -c 'import kubernetes.client, pinhole.controller.cluster' \
    && /opt/pinhole/bin/pinhole cluster-run --help >/dev/null

FROM runtime-base AS controller
COPY --from=controller-build /opt/pinhole /opt/pinhole
USER 10001:10001
CMD ["pinhole", "--help"]
