"""Locate the NLTK data the CHAIR caption parser needs, or fail saying how to get it.

The lemmatiser variant of CHAIR (OPERA ``61426efe`` ``chair.py``; docs: evaluators.md
§2.4) needs three NLTK data packages. Nothing is downloaded unless the user asks for it
(``--download-nltk``); a missing package is an error, never a silent fallback to another
tokeniser, because that would change the scores.
"""

from __future__ import annotations

import os
from typing import Any

#: NLTK package -> resource paths that satisfy it (plain folder or zip, as NLTK loads them).
REQUIRED: dict[str, tuple[str, ...]] = {
    "punkt_tab": ("tokenizers/punkt_tab/english/",),
    "averaged_perceptron_tagger_eng": ("taggers/averaged_perceptron_tagger_eng/",),
    "wordnet": ("corpora/wordnet/", "corpora/wordnet.zip/wordnet/"),
}

INSTALL_HINT = (
    "Install them with one command (needs internet):\n"
    "    python -m nltk.downloader punkt_tab averaged_perceptron_tagger_eng wordnet\n"
    "or run the job with --download-nltk. Offline, point NLTK_DATA at a folder laid out as "
    "NLTK_DATA (tokenizers/punkt_tab.zip, taggers/averaged_perceptron_tagger_eng.zip, "
    "corpora/wordnet.zip), e.g. a copy made on a machine with internet."
)


class NltkDataMissing(RuntimeError):
    """A required NLTK package or data package is not installed."""


def import_nltk() -> Any:
    try:
        import nltk
    except ImportError:
        raise NltkDataMissing(
            "CHAIR needs the nltk package: pip install 'lucid-vlm[eval]' (or pip install nltk)"
        ) from None
    return nltk


def missing_packages() -> list[str]:
    """Names of the required NLTK data packages that cannot be found."""
    nltk = import_nltk()
    missing = []
    for package, resources in REQUIRED.items():
        for res in resources:
            try:
                nltk.data.find(res)
                break
            except LookupError:
                continue
        else:
            missing.append(package)
    return missing


def ensure_nltk_data(*, download: bool = False) -> None:
    """Raise :class:`NltkDataMissing` (with install instructions) unless all data is there."""
    missing = missing_packages()
    if missing and download:
        nltk = import_nltk()
        for package in missing:
            nltk.download(package, quiet=True)
        missing = missing_packages()
    if missing:
        nltk = import_nltk()
        searched = os.pathsep.join(str(p) for p in nltk.data.path)
        raise NltkDataMissing(
            f"missing NLTK data package(s): {', '.join(missing)} (searched {searched}). "
            + INSTALL_HINT
        )


def add_nltk_dir(path: str) -> None:
    """Search ``path`` first for NLTK data (same effect as NLTK_DATA=path)."""
    nltk = import_nltk()
    if path not in nltk.data.path:
        nltk.data.path.insert(0, path)
