"""ssl-bench engine: registries, runner, features, datasets and result records."""

__version__ = "0.1.0"
