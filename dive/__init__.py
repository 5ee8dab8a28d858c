"""DIVE: disentangled video VAE with missing data, in plain PyTorch."""

__version__ = "0.1.0"
