"""Third-party noise, off unless asked for: every evaluation would otherwise print PEFT's
"base_model_name_or_path was renamed" UserWarning, transformers' FutureWarnings and its
"Loading weights" bars. Call before torch, transformers or peft are imported (it only sets the
environment and warning filters: it imports none of them)."""

from __future__ import annotations

import logging
import os
import warnings

THIRD_PARTY = ("peft", "transformers", "torch", "accelerate", "huggingface_hub", "datasets", "sklearn")


def silence_third_party(verbose: bool = False, quiet: bool = False) -> None:
    """Unless ``verbose``: ignore the warnings that third-party libraries issue and keep their
    loggers to errors. With ``quiet``: no progress bars of theirs either (ours follow
    ``progress=``)."""
    if quiet:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow it
        try:  # already imported: switch them off too
            import sys

            if "transformers" in sys.modules:
                sys.modules["transformers"].utils.logging.disable_progress_bar()
        except AttributeError:
            pass
    if verbose:
        return
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    for name in THIRD_PARTY:
        warnings.filterwarnings("ignore", module=rf"{name}(\..*)?$")
        logging.getLogger(name).setLevel(logging.ERROR)
