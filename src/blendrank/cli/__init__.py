"""The ``blendrank`` command line."""
