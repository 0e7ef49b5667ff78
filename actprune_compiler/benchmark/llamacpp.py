"""llama.cpp on the same GGUF file, measured the way actprune is: the engine a CPU user would run instead.

llama-cpp-python is an optional dependency (`pip install llama-cpp-python` builds llama.cpp from source, 10-20
minutes on 2 cores; CMAKE_ARGS="-DGGML_NATIVE=ON" builds for this CPU). Nothing else of actprune needs it.

Decode is counted as actprune's loop counts it: the prompt's token ids (the same ids actprune feeds its model)
are evaluated, the greedy next token is sampled, and each later token is one eval of the previous token plus
one greedy sample; tokens per second over the tokens after the first. Perplexity feeds llama.cpp's logits to
actprune's own perplexity function, so both engines are scored on the same windows by the same code.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actprune_compiler.reporting.files import CACHE_DIR, atomic_write

INSTALL = 'CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python (the llamacpp extra)'
# The weights llama.cpp can be asked to run besides the file's own: its types, by llama.cpp's ftype number.
WEIGHTS = {"F32": 0, "F16": 1, "Q8_0": 7}


def require():
    """The llama_cpp module, or one sentence saying how to install it."""
    try:
        import llama_cpp
    except ImportError as error:
        raise ValueError(f"llama.cpp is not installed ({error}); install it with: {INSTALL}") from None
    return llama_cpp


def converted(gguf: Path, weights: str) -> Path:
    """The GGUF file with its weights re-encoded as `weights` (F32, F16, Q8_0) by llama.cpp's own quantiser,
    kept under $ACTPRUNE_CACHE/llamacpp: the same model, read at another number of bytes per weight."""
    if weights not in WEIGHTS:
        raise ValueError(f"llama.cpp weights {weights!r} are not offered; choose one of {', '.join(WEIGHTS)}")
    target = CACHE_DIR / "llamacpp" / f"{gguf.stem}-{weights}.gguf"
    if target.exists():
        return target
    llama_cpp = require()
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(partial: str) -> None:
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = WEIGHTS[weights]
        params.allow_requantize = True  # the source is already quantised (Q4_1, Q4_K_M)
        params.quantize_output_tensor = True
        if llama_cpp.llama_model_quantize(str(gguf).encode(), partial.encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not convert {gguf.name} to {weights}")

    atomic_write(target, write)
    return target


def weights_read_per_token(gguf: Path) -> int:
    """Bytes of the file's tensors a decode step reads: all but the token embedding, which it reads whole only
    when the file has no output matrix of its own (tied) and multiplies by the embedding instead."""
    from gguf import GGUFReader

    sizes = {tensor.name: int(tensor.n_bytes) for tensor in GGUFReader(str(gguf)).tensors}
    untied = "output.weight" in sizes
    return sum(size for name, size in sizes.items() if not (untied and name == "token_embd.weight"))


def file_type(gguf: Path) -> str:
    """The weight type a GGUF file declares (general.file_type), e.g. 'Q4_1' or 'Q4_K_M'."""
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(str(gguf)).fields.get("general.file_type")
    if field is None:
        return "unknown"
    return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_")


class LlamaCpp:
    """One GGUF model loaded in llama.cpp with a fixed thread count."""

    def __init__(self, gguf: Path, threads: int, context: int = 2048, *, logits: bool = False) -> None:
        """logits=True keeps every position's logits (for perplexity); decode needs only the last one's."""
        llama_cpp = require()
        self.path, self.threads = gguf, threads
        self.model = llama_cpp.Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads,
                                     n_ctx=context, n_batch=512, logits_all=logits, verbose=False)

    def close(self) -> None:
        """Free llama.cpp's model and context now (a process that loads several would hold them all)."""
        self.model.close()

    def decode(self, prompt: list[int], new_tokens: int) -> dict[str, Any]:
        """Greedy generation of new_tokens tokens (no stop at end-of-sequence), timed like actprune's loop."""
        llm = self.model
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        tokens = [llm.sample(top_k=1, temp=0.0)]
        first_token_s = time.perf_counter() - start
        times = []
        while len(tokens) < new_tokens:
            begin = time.perf_counter()
            llm.eval([tokens[-1]])
            tokens.append(llm.sample(top_k=1, temp=0.0))
            times.append(time.perf_counter() - begin)
        rate = len(times) / sum(times) if times else float("nan")
        return {"tokens": tokens, "first_token_s": first_token_s, "decode_tokens_per_s": rate}

    def logits(self, window: list[int]) -> torch.Tensor:
        """[len(window), vocab] next-token logits for a window of token ids, evaluated from an empty context:
        what actprune's perplexity function scores, for the same windows."""
        llm = self.model
        llm.reset()
        llm.eval(window)
        return torch.from_numpy(np.array(llm.scores[: len(window)], dtype=np.float32))
