"""actprune as one more lm-eval model: `lm-eval --model actprune --model_args pretrained=smollm2-135m,pattern=8:16`.

ActPruneLM is lm-eval's HFLM with one step added: after HFLM has loaded the model from a *string*
`pretrained` (an HFLM built from a model object forces a single process, so the string keeps
lm-eval's data parallelism), `compile_model` rewrites `model.forward` with actprune's torch.compile
backend. loglikelihood requests call `model(ids)` and generate_until calls `model.generate`, which
uses the same compiled forward with its KV cache, so every request runs the sparse program.

Importing this module registers the name "actprune" (the `actprune-lm-eval` command does; lm-eval
releases that read the `lm_eval.models` entry point find it themselves).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM

from actprune_compiler.backends.dynamo import compile_model
from actprune_compiler.backends.freeze import DEFAULT_FREEZE, refuse_regional_freeze
from actprune_compiler.eval.data import calibration_text
from actprune_compiler.eval.distributed import prepare_rank
from actprune_compiler.models.gguf import pretrained_source
from actprune_compiler.models.load import ALIASES, gguf_file, resolve_dtype
from actprune_compiler.reporting.runinfo import versions
from actprune_compiler.sparsity.config import SparsityConfig

CONFIG_ARGS = tuple(f.name for f in dataclasses.fields(SparsityConfig))
# Beyond the SparsityConfig fields: where calibration text comes from, and eager (reference kernels)
# instead of Inductor, as `actprune eval --no-compile` does.
EXTRA_ARGS = ("calib_data", "data_dir", "compile", "freeze", "regional")


def resolve_pretrained(spec: str, dtype: str | torch.dtype) -> tuple[str, str | None]:
    """(what from_pretrained loads, gguf_file) for an actprune alias or a .gguf file path: the
    dequantised copy that actprune's own loads leave behind (models/gguf.py) when there is one, else
    the GGUF file. Any other spec (a folder, a hub id) is HFLM's to load as given."""
    gguf = gguf_file(spec)
    return (spec, None) if gguf is None else pretrained_source(gguf, resolve_dtype(dtype))


def _cpu_processes(device: str | None) -> bool:
    """Whether this is one of several processes (torchrun/accelerate launch) that score on the CPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    return not torch.cuda.is_available() or (device is not None and torch.device(device).type == "cpu")


@register_model("actprune")
class ActPruneLM(HFLM):
    """HFLM over a model pruned by actprune: SparsityConfig fields (pattern, target, criterion, correction,
    modules, exclude, skip_sensitive, calib_samples, calib_seqlen), calib_data, data_dir and compile are
    actprune's; everything else goes to HFLM (and through it to from_pretrained) unchanged."""

    def __init__(self, pretrained: str, dtype: str | torch.dtype = "float32", gguf_file: str | None = None,
                 **kwargs: Any) -> None:
        if not isinstance(pretrained, str):
            raise TypeError(f"pretrained must be a string (an alias: {', '.join(ALIASES)}; a folder, .gguf file or "
                            f"hub id), not {type(pretrained).__name__}: HFLM runs a model object in one process "
                            "only; to score a model object use actprune_compiler.eval.harness.make_lm")
        ours = {name: kwargs.pop(name) for name in (*CONFIG_ARGS, *EXTRA_ARGS) if name in kwargs}
        compiled = ours.pop("compile", True)
        # freeze=true compiles as `actprune eval` does (weights folded as constants): the same float32 numerics
        freeze = ours.pop("freeze", DEFAULT_FREEZE)
        if not isinstance(freeze, bool):
            raise ValueError(f"freeze must be true or false, not {freeze!r}")
        # regional=true compiles each kind of decoder layer once (backends/regional_graph.py)
        regional = ours.pop("regional", False)
        for name, value in (("compile", compiled), ("regional", regional)):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, not {value!r}")
        calib_data, data_dir = ours.pop("calib_data", None), ours.pop("data_dir", None)
        # Checked before the model loads, so that a bad argument fails at once.
        self.sparsity = SparsityConfig(**ours)
        refuse_regional_freeze(regional, freeze, how="regional=true or freeze=true, not both")
        needs_text = self.sparsity.needs_calibration() or self.sparsity.skip_sensitive
        text = calibration_text(calib_data, data_dir) if needs_text else None

        source, alias_gguf = resolve_pretrained(pretrained, dtype)
        if gguf_file and source != pretrained:
            raise ValueError(f"pretrained={pretrained!r} names its GGUF file already; drop gguf_file={gguf_file!r}")
        if _cpu_processes(kwargs.get("device")):
            # accelerate joins the processes on the CPU (gloo) only when told to; `accelerate launch --cpu`
            # sets this, torchrun does not. It must be set before HFLM creates its Accelerator.
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        prepare_rank()  # under torchrun: a per-rank Inductor cache and an even share of the cores
        super().__init__(pretrained=source, dtype=dtype, gguf_file=gguf_file or alias_gguf, **kwargs)
        self._split_documents_on_cpu()

        # The backend prunes whatever forward it traces: model(ids) for loglikelihood and generate's
        # prefill and decode steps alike.
        compile_model(self.model, self.sparsity, tokenizer=self.tokenizer, calib_text=text[0] if text else None,
                      freeze=freeze, regional=regional, inner_backend="inductor" if compiled else "eager")
        self.actprune_info = {"pretrained": pretrained, "config": self.sparsity.to_dict(),
                              "label": self.sparsity.label, "compiled": compiled, "regional": regional,
                              "calibration": text[1] if text else None}

    def _split_documents_on_cpu(self) -> None:
        """HFLM takes its rank and world size from the Accelerator only when it counts more than one GPU;
        on the CPU every process would score every document. Take them from the Accelerator here."""
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and accelerator.num_processes > 1 and self._world_size == 1:
            self._rank = accelerator.process_index  # global: lm-eval shards documents and gathers by it
            self._world_size = accelerator.num_processes

    def get_model_info(self) -> dict[str, Any]:
        """HFLM's model info (in the results file's config), plus what actprune did to the model and the
        versions it ran with (actprune, torch, transformers, lm_eval, datasets: reporting/runinfo.versions)."""
        return {**super().get_model_info(), "actprune": {**self.actprune_info, "versions": versions()}}
