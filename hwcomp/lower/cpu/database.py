"""The MetaSchedule tuning database as ``hwcomp build`` reads it and ``hwcomp tune`` writes it.

Two JSON-lines files per target folder (TVM's ``JSONDatabase``). A run killed mid-write can
leave a torn last line, which TVM refuses to load; :func:`repair_database` drops it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"


def count_records(database: Path) -> int:
    """Tuning records in ``database`` (0 when it does not exist)."""
    path = Path(database) / RECORDS
    if not path.is_file():
        return 0
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def repair_database(database: Path) -> int:
    """Drop unparsable lines (a run killed mid-write); return how many were dropped."""
    dropped = 0
    for name in (WORKLOADS, RECORDS):
        path = Path(database) / name
        if not path.is_file():
            continue
        good = []
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError:
                dropped += 1
                continue
            good.append(line)
        if dropped:
            path.write_text("".join(f"{line}\n" for line in good))
    if dropped:
        logger.warning("%s: dropped %d torn line(s) left by an interrupted run", database, dropped)
    return dropped
