"""What every output records of the software that made it: gradpruner's version and the
libraries' (imported only when recorded)."""

from __future__ import annotations

import platform

__version__ = "0.1.0"


def versions() -> dict:
    """Library versions recorded in every sidecar."""
    import peft
    import torch
    import transformers

    return {"gradpruner": __version__, "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version()}
