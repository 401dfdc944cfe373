"""A run folder: the settings, each finished phase's result, and its time; a rerun reads finished phases back."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from practise_jax.errors import UserError
from practise_jax.pipeline.config import CompressConfig
from practise_jax.store import differing_keys


class Run:
    def __init__(self, out: str | Path, config: CompressConfig, overwrite: bool = False, log: Callable[[str], None] = print):
        self.dir = Path(out)
        self.config = config
        self.log = log
        settings = json.loads(json.dumps(dataclasses.asdict(config)))
        run_file = self.dir / "run.json"
        if run_file.exists():
            saved = {**_defaults(), **json.loads(run_file.read_text())}  # a setting added since: its default
            changed = differing_keys(saved, settings)
            if changed and not overwrite:
                what = f"of model {saved.get('model')}" if saved.get("model") != config.model else "with other settings"
                raise UserError(f"'{self.dir}' holds a run {what} ({', '.join(changed)} differ); "
                                "use another --out, or --overwrite to replace it.")
            if changed:
                shutil.rmtree(self.dir)
        elif self.dir.exists() and any(self.dir.iterdir()):
            if not overwrite:
                raise UserError(f"'{self.dir}' is not empty and holds no practise-jax run; use another --out, or --overwrite.")
            shutil.rmtree(self.dir)
        (self.dir / "phases").mkdir(parents=True, exist_ok=True)
        run_file.write_text(json.dumps(settings, indent=1))

    def phase(self, name: str, compute: Callable[[], dict]) -> dict:
        """The result of phase ``name``: read back if finished before, else computed, timed and saved."""
        path = self.dir / "phases" / f"{name}.json"
        if path.exists():
            self.log(f"[{name}] done before, read from {path}")
            return json.loads(path.read_text())
        self.log(f"[{name}] ...")
        started = time.perf_counter()
        result = compute()
        result["seconds"] = time.perf_counter() - started
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        self.log(f"[{name}] {result['seconds']:.1f} s")
        return result

    def seconds(self, names) -> dict[str, float]:
        return {name: json.loads(path.read_text()).get("seconds")
                for name in names if (path := self.dir / "phases" / f"{name}.json").exists()}


def _defaults() -> dict:
    """Every setting that has a default, as JSON would hold it."""
    fields = dataclasses.fields(CompressConfig)
    return json.loads(json.dumps({f.name: f.default for f in fields if f.default is not dataclasses.MISSING}))

