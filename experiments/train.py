"""``python -m experiments.train``: the ``sfw-train`` command line (:mod:`sfw_jax.training.cli`)
run from a checkout."""

import sys

from sfw_jax.training.cli import main

if __name__ == "__main__":
    sys.exit(main())
