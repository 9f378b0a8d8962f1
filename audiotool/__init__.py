"""audiotool: audio super-resolution, source separation, representation round-trips and embeddings.

Importing the package is cheap: torch is imported only by the modules that run models.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
