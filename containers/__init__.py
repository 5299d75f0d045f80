"""Container images (Dockerfile, images.sh) and the container lab backend (lab.py)."""
