"""``tailshift reproduce``: the paper's tables and figures. Importing this package registers every command
(each module's ``@reproduce_command``); these modules import torch, numpy and the engine only when a
command runs, so the command line is built without them."""
from . import ablations, curves, figure_commands, lift, table1, table2, table3  # noqa: F401  (registration side effect)
from .commands import COMMANDS

__all__ = ["COMMANDS"]
