"""Merge what scripts/gpu_check.sh wrote into one gpu_check.json: perplexities, kernels, speed ratios."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def main(out: Path) -> None:
    merged: dict = {"gpu": (out / "gpu.txt").read_text().strip() if (out / "gpu.txt").exists() else None}
    for pattern in ("none", "8-16", "2-4"):
        result = read(out / f"eval-{pattern}.json")
        merged[f"eval {pattern}"] = None if result is None else {
            "ppl": result["metrics"]["wikitext2"]["ppl"], "windows": result["metrics"]["wikitext2"]["windows"],
            "device": result.get("device"), "dtype": result.get("dtype"), "kernels": result.get("kernels"),
            "compile_s": result["stages_s"].get("compile_s"), "runtime_s": result["runtime_s"]}
    bench = read(out / "bench" / "bench.json")
    if bench is not None:
        merged["prefill"] = [{"shape": row["shape"], **{name: row[name].get("vs dense compiled") for name in row
                                                         if isinstance(row[name], dict)}} for row in bench["prefill"]]
        merged["decode"] = {name: {"tokens_per_s": v.get("tokens_per_s"),
                                  "speed-up vs dense compiled": v.get("speed-up vs dense compiled")}
                            for name, v in bench["decode"].items()}
    merged["gemm"] = read(out / "gpu_bench.json")
    (out / "gpu_check.json").write_text(json.dumps(merged, indent=2))
    print(json.dumps({k: v for k, v in merged.items() if k != "gemm"}, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
