"""Batch inference on a Dask cluster: ``kaon batch`` and ``kaon.batch.generate``.

Modules: ``records`` (input/output lines), ``partitions`` (split, resume, atomic part files),
``worker`` (one cached engine per worker process), ``job`` (the driver), ``cluster`` (Dask
clients), ``cli`` (the subcommand). Importing this package does not import dask.
"""

from kaon.batch.job import BatchJobReport, generate, run_batch_job

__all__ = ["BatchJobReport", "generate", "run_batch_job"]
