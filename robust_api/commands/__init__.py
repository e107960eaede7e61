"""Commands: the ``robust-api`` command line and the training scripts.

Commands import components (the API, providers, denoisers, logs, analysis); no component
imports a command. ``robust-api`` is :func:`robust_api.commands.cli.main` (also
``python -m robust_api``); the denoiser commands are :mod:`robust_api.commands.denoisers`;
``python -m robust_api.commands.train_fashion_mnist`` trains the bundled classifier.
"""
