"""Where eSpeak NG lives: the library bundled by `espeakng-loader`, else a system install."""

from __future__ import annotations

import ctypes.util
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path


@dataclass(frozen=True)
class EspeakInstall:
    library: str  # path of libespeak-ng
    data: str | None  # espeak-ng-data directory; None lets the library use its compiled-in default


@cache
def find_espeak() -> EspeakInstall:
    """Locate libespeak-ng and its data, preferring the copy bundled with `espeakng-loader`."""
    try:
        import espeakng_loader
    except ImportError:
        espeakng_loader = None
    if espeakng_loader is not None:
        library, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        if Path(library).is_file():
            return EspeakInstall(library, data)
    system = os.environ.get("PHONEMIZER_ESPEAK_LIBRARY") or ctypes.util.find_library("espeak-ng")
    if system:
        return EspeakInstall(system, os.environ.get("ESPEAK_DATA_PATH"))
    raise RuntimeError(
        "eSpeak NG was not found: install the bundled copy with `pip install espeakng-loader` "
        "(or the system package: `apt-get install espeak-ng`)"
    )
