"""``python -m tailshift`` (and ``torchrun ... -m tailshift train CONFIG``): the ``tailshift`` command."""
import sys

from .cli import main

sys.exit(main())
