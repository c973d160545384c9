"""Experiments for jaxprune: models, data and the pruning sweep runner.

Run the main job (LeNet-300-100 on MNIST; dense vs one-shot vs gradual magnitude pruning at
80/90/95/98% sparsity) with ``python -m experiments``.
"""
