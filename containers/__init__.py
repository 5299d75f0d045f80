"""Containers: the image build (Dockerfile, images.sh), the container lab backend (lab.py) and
`podman kube play` of the Kubernetes manifests (kube_play.py)."""
