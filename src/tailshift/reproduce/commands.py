"""The ``tailshift reproduce`` commands by name. Each command is a function registered where it is defined
(``@reproduce_command("table1")``); its parameters are the options it takes, so an option it does not
take is refused in one line before anything runs.

Every command takes ``output`` (``--output``) and ``overrides`` (``key=value`` arguments); the others are
keyword parameters named as the options (``mnist_root``: ``--mnist-root``) with the command's default."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from ..registry import Registry

#: ``--seeds`` when not given: seeds 0-4
DEFAULT_SEEDS = (0, 1, 2, 3, 4)
#: the parameters every command has
COMMON = ("output", "overrides")


def flag(option: str) -> str:
    """The command-line spelling of an option: ``mnist_root`` -> ``--mnist-root``."""
    return "--" + option.replace("_", "-")


@dataclass(frozen=True)
class Command:
    """A registered command: its function, and the options (parameters beyond ``COMMON``) it takes."""

    name: str
    function: Callable

    @property
    def options(self) -> tuple[str, ...]:
        return tuple(p for p in inspect.signature(self.function).parameters if p not in COMMON)

    @property
    def summary(self) -> str:
        """The first line of the function's docstring."""
        return (self.function.__doc__ or "").strip().splitlines()[0]

    def __call__(self, output: Path, overrides: Sequence[str] = (), **options):
        """Run with the options given (the others keep the command's defaults); one it does not take is refused."""
        refused = [o for o in options if o not in self.options]
        if refused:
            taken = ", ".join(flag(o) for o in (*self.options, "output"))
            raise ValueError(f"reproduce {self.name} does not take {', '.join(flag(o) for o in refused)}; "
                             f"it takes {taken} and key=value overrides")
        return self.function(output=Path(output), overrides=list(overrides), **options)


COMMANDS: Registry[Command] = Registry("reproduce command")


def reproduce_command(name: str) -> Callable[[Callable], Callable]:
    """Register the decorated function as ``tailshift reproduce <name>``; it stays callable as it is."""
    def register(function: Callable) -> Callable:
        missing = [p for p in COMMON if p not in inspect.signature(function).parameters]
        if missing:
            raise TypeError(f"reproduce command {name!r} must take {', '.join(missing)}")
        COMMANDS.register(name)(Command(name, function))
        return function

    return register
