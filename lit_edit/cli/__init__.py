"""Library side of the entry points: ``edit.py`` and ``train.py`` only compose a config."""
