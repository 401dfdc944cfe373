"""``python -m practise_jax.cli``: the same as the ``practise-jax`` command."""

import sys

from practise_jax.cli import main

sys.exit(main())
