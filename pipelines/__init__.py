"""zsad: zero-shot anomaly detection experiments on PyTorch Lightning."""

import os

# Cluster nodes have no internet: make huggingface_hub fail fast from its cache instead of retrying the
# network for a minute. It reads this at import time, so it is set before anything imports it.
# Set ZSAD_ONLINE=1 to allow downloads.
if os.environ.get("ZSAD_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
