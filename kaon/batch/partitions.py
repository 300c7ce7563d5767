"""Partitions of a batch job and their files: split, resume, write atomically, assemble.

A job writing ``OUTPUT.jsonl`` keeps its state next to it::

    OUTPUT.jsonl.parts/
        job.json            fingerprint of the job (input bytes, partition size, options)
        part-00000.jsonl    output lines of records [0, partition_size), in order
        part-00001.jsonl    ...

Each part file appears only complete (written to a temporary name, fsynced, then renamed: a rename
within one directory is atomic on POSIX), so a part that exists is finished. A rerun with the same
output path and the same job skips those partitions; a rerun of a different job refuses to mix
its outputs with the old parts. ``OUTPUT.jsonl`` is assembled from the parts, in order, at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def split(num_records: int, partition_size: int) -> list[range]:
    """Record index ranges ``[start, stop)`` of each partition, in order.

    Raises:
        ValueError: when ``partition_size`` is not a positive integer.
    """
    if (
        isinstance(partition_size, bool)
        or not isinstance(partition_size, int)
        or partition_size < 1
    ):
        raise ValueError(f"partition_size must be a positive integer, got {partition_size!r}")
    return [
        range(start * partition_size, min((start + 1) * partition_size, num_records))
        for start in range(-(-num_records // partition_size))
    ]


def job_fingerprint(input_path: str | Path, partition_size: int, options: dict[str, Any]) -> str:
    """SHA-256 (hex) over the input file's bytes, the partition size and the job's options
    (sampling defaults and engine options, as ``repr``): equal fingerprints, same outputs."""
    digest = hashlib.sha256()
    with open(input_path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    digest.update(f"|{partition_size}|{sorted(options.items())!r}".encode())
    return digest.hexdigest()


class PartStore:
    """The ``OUTPUT.jsonl.parts`` directory of one job."""

    def __init__(self, output_path: str | Path) -> None:
        self.output_path = Path(output_path)
        self.directory = self.output_path.with_name(self.output_path.name + ".parts")

    def open(self, fingerprint: str, num_partitions: int) -> None:
        """Create the directory, or check that the one there belongs to the same job.

        Raises:
            ValueError: when the directory holds parts of a different job.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        manifest = self.directory / "job.json"
        wanted = {"fingerprint": fingerprint, "num_partitions": num_partitions}
        if manifest.exists():
            found = json.loads(manifest.read_text())
            if found != wanted:
                raise ValueError(
                    f"{self.directory} holds partitions of a different job (other input, "
                    "partition size or options); delete it or choose another output path"
                )
            return
        _atomic_write(manifest, json.dumps(wanted) + "\n")

    def part_path(self, partition_index: int) -> Path:
        return self.directory / f"part-{partition_index:05d}.jsonl"

    def finished(self, num_partitions: int) -> set[int]:
        """Indices of the partitions whose part file exists (so is complete)."""
        return {i for i in range(num_partitions) if self.part_path(i).exists()}

    def write_part(self, partition_index: int, lines: list[dict[str, Any]]) -> None:
        """Write one finished partition atomically (temporary file + rename)."""
        text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
        _atomic_write(self.part_path(partition_index), text)

    def assemble(self, partitions: list[range]) -> int:
        """Concatenate every part, in order, into the output file (atomically); return the
        number of lines written.

        Raises:
            ValueError: when a part is missing or holds other records than its partition's.
        """
        temporary = self.output_path.with_name(self.output_path.name + ".tmp")
        num_lines = 0
        with open(temporary, "w", encoding="utf-8") as out:
            for partition_index, indices in enumerate(partitions):
                path = self.part_path(partition_index)
                if not path.exists():
                    raise ValueError(f"{path} is missing; rerun the job to complete it")
                lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
                found = [json.loads(line)["index"] for line in lines]
                if found != list(indices):
                    raise ValueError(
                        f"{path} does not hold records {indices.start}..{indices.stop}"
                    )
                out.writelines(lines)
                num_lines += len(lines)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.output_path)
        return num_lines


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
