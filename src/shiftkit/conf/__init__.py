"""Hydra's primary config for ``shiftkit train``; group options are generated (see ``shiftkit.config``)."""
