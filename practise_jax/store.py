"""An append-only JSON-lines results store, so a killed run resumes where it stopped.

The first line records the settings the results depend on; reopening with
other settings is refused (results of different settings must not mix).
Each later line is one finished record, flushed and fsynced as it is written.
Several processes may share a store, each writing its own keys (work split over
cores); a store opened afterwards holds them all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from practise_jax.errors import UserError


def differing_keys(a: dict, b: dict) -> list[str]:
    """The keys whose values differ between two settings dicts (a missing key counts as None)."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


class ResultsStore:
    def __init__(self, path: str | os.PathLike, settings: dict):
        self.path = Path(path)
        self.settings = json.loads(json.dumps(settings))  # normalised as it will be read back
        self.records: dict[str, dict] = {}
        if (self.path.exists() and self.path.stat().st_size) or not self._create():
            self._read()

    @staticmethod
    def open_existing(path: str | os.PathLike, settings: dict) -> "ResultsStore":
        """A store that must already exist with exactly these settings (to reuse another run's results)."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no results at '{path}'; give the recoverability.jsonl of a finished 'practise-jax score' run.")
        return ResultsStore(path, settings)

    def _create(self) -> bool:
        """Write the settings line as a new store; False if another process made the store first.

        The header appears in one atomic link, so processes sharing a store (candidates split
        over cores) never both write one; their records are single appended lines.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_name(f".{self.path.name}.{os.getpid()}.draft")
        draft.write_text(json.dumps({"settings": self.settings}) + "\n")
        try:
            os.link(draft, self.path)
            return True
        except FileExistsError:
            if self.path.stat().st_size:
                return False
            os.replace(draft, self.path)  # an empty file left by a kill: take its place
            return True
        finally:
            draft.unlink(missing_ok=True)

    def _read(self) -> None:
        text = self.path.read_text()
        if not text.endswith("\n"):  # a record cut off by a kill: drop it, it is recomputed
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text)
        lines = text.splitlines()
        header = json.loads(lines[0]).get("settings")
        if header != self.settings:
            changed = differing_keys(header, self.settings)
            raise UserError(
                f"{self.path} holds results made with other settings ({', '.join(changed)} differ); "
                "choose another output folder, or delete that file to start over."
            )
        for line in lines[1:]:
            record = json.loads(line)
            self.records[record["key"]] = record

    def _append(self, obj: dict) -> None:
        with self.path.open("a") as file:
            file.write(json.dumps(obj) + "\n")
            file.flush()
            os.fsync(file.fileno())

    def __contains__(self, key: str) -> bool:
        return key in self.records

    def get(self, key: str) -> dict:
        return self.records[key]

    def put(self, key: str, record: dict) -> None:
        record = {"key": key, **record}
        self.records[key] = record
        self._append(record)
