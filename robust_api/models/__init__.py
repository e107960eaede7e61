"""Bundled classifier architectures for robust_api.

See :mod:`robust_api.models.fashion_mnist` for the Fashion-MNIST CNN and its
``build(arch)`` factory, and :mod:`robust_api.models.train_fashion_mnist` for
the script that produced ``robust_api/assets/fashion_mnist_cnn.safetensors``.
"""
