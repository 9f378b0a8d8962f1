"""The jobs as library functions (the Python API the CLI calls).

``upsample_files`` / ``separate_files`` / ``reconstruct_files`` / ``embed_files`` run a batch
like the CLI does; the ``*_tensor`` functions process one signal in memory.
"""

from audiotool.tasks._batch import (
    BatchReport,
    FileResult,
    OutputOptions,
    RuntimeOptions,
    ScaleOptions,
)

__all__ = ["BatchReport", "FileResult", "OutputOptions", "RuntimeOptions", "ScaleOptions"]
