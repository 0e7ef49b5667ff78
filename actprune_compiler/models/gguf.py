"""A dequantised copy of each GGUF model, so that only the first load pays for dequantisation.

transformers dequantises every tensor of a GGUF file on load (about 18 s for smollm2-135m on this
machine). The copy (safetensors and tokenizer, written by save_pretrained) loads in a second or two.
It is keyed by the GGUF file's sha256 and the dtype, so a changed file or another dtype never reads
a stale copy. ACTPRUNE_NO_GGUF_CACHE=1 turns it off; the folder is $ACTPRUNE_CACHE/dequantized.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_model

from actprune_compiler.reporting.files import CACHE_DIR, atomic_folder, sha256_file

log = logging.getLogger("actprune")
Loader = Callable[[str, "str | None"], tuple[Any, Any]]  # (folder, gguf file name or None) -> (model, tokenizer)


def cached_folder(gguf: Path, dtype: torch.dtype | str) -> Path:
    name = str(dtype).removeprefix("torch.")
    return CACHE_DIR / "dequantized" / f"{gguf.stem}-{sha256_file(gguf)[:16]}-{name}"


def pretrained_source(gguf: Path, dtype: torch.dtype | str) -> tuple[str, str | None]:
    """(folder, GGUF file name or None) for from_pretrained: the dequantised copy when there is one (and
    the cache is on), else the GGUF file itself. For what reads a GGUF model without load_model
    (lm-eval's HFLM, an artifact's tokenizer)."""
    if os.environ.get("ACTPRUNE_NO_GGUF_CACHE") != "1":
        folder = cached_folder(gguf, dtype)
        if (folder / "config.json").exists():
            return str(folder), None
    return str(gguf.parent), gguf.name


def load_gguf(gguf: Path, dtype: torch.dtype | str, load: Loader) -> tuple[Any, Any]:
    """(model, tokenizer) from the dequantised copy when there is one; otherwise from the GGUF file,
    leaving a copy behind for the next load."""
    if os.environ.get("ACTPRUNE_NO_GGUF_CACHE") == "1":
        return load(str(gguf.parent), gguf.name)
    folder = cached_folder(gguf, dtype)
    if (folder / "config.json").exists():
        return load(str(folder), None)
    model, tokenizer = load(str(gguf.parent), gguf.name)

    def fill(building: Path) -> None:
        save_dequantized(model, tokenizer, building)

    if folder.exists():
        return model, tokenizer  # another process (a torchrun rank) wrote the same copy meanwhile
    try:
        atomic_folder(folder, fill)  # whole or absent: a crash mid-save leaves no half copy to load
    except OSError as error:  # a full or read-only disk costs the next load time, not this result
        log.warning("could not keep a dequantised copy of %s in %s (%s); the next load dequantises again",
                    gguf.name, folder.parent, error)
    return model, tokenizer


def unmarked_config(config: Any) -> Any:
    """A copy of a model config without its quantization_config: a GGUF file read directly marks the config
    as quantised although its tensors are plain floats by now, and the dequantised copy drops the mark."""
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


def save_dequantized(model, tokenizer, folder: Path) -> None:
    """save_pretrained refuses a model loaded from GGUF (it counts as quantised), though its tensors
    are plain floats by now: write them with safetensors, and a config without the GGUF marker."""
    save_model(model, str(folder / "model.safetensors"), metadata={"format": "pt"})  # drops tied duplicates
    unmarked_config(model.config).save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
