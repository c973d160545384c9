"""``python -m experiments``: runs the main job (LeNet-300-100 on MNIST pruning sweep).

See ``python -m experiments --help`` and :mod:`experiments.cli`.
"""

import sys

from experiments.cli import main

if __name__ == "__main__":
  sys.exit(main())
