"""The timing process: ``python -m practise_jax.latency.child THREADS JOB RESULT``.

It pins itself to ``THREADS`` cores and sets XLA's thread flags *before* JAX
starts (XLA reads them once), then runs the pickled ``(function, args)`` of
file JOB and pickles the return value to file RESULT. A fresh interpreter
started this way never imports the caller's ``__main__``, so a script without
an ``if __name__ == "__main__"`` guard can profile too.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path


def main(threads: str, job: str, result: str) -> None:
    from practise_jax.latency.pinning import pin

    pin(int(threads))
    function, args = pickle.loads(Path(job).read_bytes())
    Path(result).write_bytes(pickle.dumps(function(*args)))


if __name__ == "__main__":
    main(*sys.argv[1:])
