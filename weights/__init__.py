"""Data package ``timemachine.zoo``: the model-zoo manifest (``manifest.json``), nothing else.

This directory is installed as the package ``timemachine.zoo`` (see ``package-dir`` in pyproject.toml), so the
manifest ships inside wheels and is found by editable installs; ``timemachine.weights`` reads it with
``importlib.resources``.  Downloaded weights never live here: they go to the cache directory
(``timemachine weights path``).
"""
