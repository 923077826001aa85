"""MuSc (Li et al., ICLR 2024): training-free, transductive zero-shot anomaly detection.

Every test image of a category is scored against the other unlabeled test images of that category:

- :mod:`scoring`: the plain-torch pieces, LNAMD (local neighbourhood aggregation with multiple degrees),
  MSM (mutual scoring, batched) and RsCIN (image re-scoring through class-token neighbours);
"""
