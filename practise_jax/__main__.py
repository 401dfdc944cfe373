"""``python -m practise_jax`` runs the ``practise-jax`` command."""

import sys

from practise_jax.cli import main

sys.exit(main())
