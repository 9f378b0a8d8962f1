"""Model families, one per file (see :mod:`audiotool.models.registry`)."""
