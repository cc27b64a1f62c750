"""Methods by name. Importing this package registers every built-in method."""
from . import bbn, bcl, cam_bs, csa, decoupled, dual, erm, m2m, mixing_methods  # noqa: F401  (registration side effect)
from .base import METHODS, Method, Stage, StepContext, StepOutput, StreamRequest

__all__ = ["METHODS", "Method", "Stage", "StepContext", "StepOutput", "StreamRequest"]
