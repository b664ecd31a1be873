"""The previous release's state format (``state.json.gz``, version 1, with its journal),
read once to convert it into a version 2 database (shared/storage/state.py). A converted state
has no directory cache, so that run reads the directory in full."""

from __future__ import annotations

import gzip
import json
import logging

from ..common.errors import StateError
from ..model.records import DATASETS, Records
from .state import FORMAT, VERSION, StateDB, parse_journal

log = logging.getLogger("shared.state")  # the name its log lines have always carried

def load_v1(data: bytes, journal: bytes, where: str) -> tuple[str, int, dict[str, Records]]:
    try:
        doc = json.loads(gzip.decompress(data))
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != 1:
            raise ValueError("not a version 1 state")
        lineage, generation = str(doc["lineage"]), int(doc["generation"])
        datasets: dict[str, Records] = {}
        for name, recs in doc["datasets"].items():
            if name not in DATASETS:
                raise ValueError(name)
            if name == "addresses":
                datasets[name] = dict.fromkeys(recs, ())
            else:
                datasets[name] = {}
                for k, v in recs.items():
                    first, ids = v
                    if not isinstance(first, str) or not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                        raise ValueError("bad record")
                    datasets[name][str(k)] = (first, tuple(ids))
    except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        raise StateError(f"the previous release's state at {where} is unreadable; run 'refresh' to rebuild it from the service") from None
    seq = 0
    for entry in parse_journal(journal)[0]:
        if entry.get("lineage") == lineage and entry.get("generation") == generation and entry.get("seq") == seq + 1:
            try:
                d = entry["dataset"]
                recs = datasets.setdefault(d, {})
                for k in entry["delete"]:
                    recs.pop(k, None)
                for k, v in entry["upsert"].items():
                    recs[k] = () if d == "addresses" else (v[0], tuple(v[1]))
            except (KeyError, TypeError, IndexError):
                break
            seq += 1
    return lineage, generation, datasets


def convert_v1(db: StateDB, lineage: str, generation: int, datasets: dict[str, Records]) -> None:
    db.adopt_lineage(lineage, generation)
    for name, recs in datasets.items():
        db.replace_records(name, recs)
    db.converted_from = "state.json.gz version 1"
    db.commit()
    log.warning(
        "state %s: converted the previous release's state (state.json.gz, version 1) to version %d; "
        "it has no directory cache, so this run reads the directory in full",
        db.where,
        VERSION,
    )
