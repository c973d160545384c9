"""``python -m experiments``: runs the main job (LeNet-300-100 on MNIST pruning sweep).

See ``python -m experiments --help`` and :mod:`experiments.runner`.
"""

import sys

from experiments.runner import main

if __name__ == "__main__":
    sys.exit(main())
