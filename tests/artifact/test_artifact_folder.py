"""Artifact folders are written atomically: an interrupted save leaves the old artifact intact."""

import json

import pytest
import torch
from conftest import tiny_program

from actprune_compiler import SparsityConfig, sparsify
from actprune_compiler.artifact.folder import input_ranges, load_program, load_report, save_artifact


@pytest.fixture(scope="module")
def pruned():
    return sparsify(tiny_program("llama"), SparsityConfig("8:16"))


def test_an_existing_artifact_is_refused_without_force_and_replaced_with_it(tmp_path, pruned):
    out = save_artifact(tmp_path / "art", pruned.program, {"label": "first"})
    with pytest.raises(ValueError, match="already exists and is not empty; pass --force"):
        save_artifact(out, pruned.program, {"label": "second"})
    save_artifact(out, pruned.program, {"label": "second"}, force=True)
    assert load_report(out, check=False)["label"] == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]  # no temporary siblings left


def test_a_save_interrupted_midway_leaves_the_old_artifact_and_no_debris(tmp_path, pruned, monkeypatch):
    out = save_artifact(tmp_path / "art", pruned.program, {"label": "old"})
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def interrupted(program, path):
        path.write_bytes(b"half a program")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_artifact(out, pruned.program, {"label": "new"}, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    assert json.loads((out / "report.json").read_text())["label"] == "old"


def test_a_corrupt_program_is_one_sentence(tmp_path, pruned):
    out = save_artifact(tmp_path / "art", pruned.program, {"label": "x"})
    (out / "program.pt2").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError, match="is not a readable torch.export program .*; recompile it"):
        load_program(out)


def test_an_out_path_that_is_a_file_is_refused(tmp_path, pruned):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ValueError, match="is a file; give a folder path"):
        save_artifact(target, pruned.program, {})


def test_a_failed_swap_puts_the_old_artifact_back(tmp_path, pruned, monkeypatch):
    import os

    out = save_artifact(tmp_path / "art", pruned.program, {"label": "old"})
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # the new folder into place
            raise OSError("disk went away")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="disk went away"):
        save_artifact(out, pruned.program, {"label": "new"}, force=True)
    monkeypatch.undo()
    assert load_report(out, check=False)["label"] == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_the_saved_program_keeps_its_dynamic_batch_and_sequence_ranges(tmp_path, pruned):
    """actprune eval --model ARTIFACT reads them to refuse a --seqlen the program was not exported for."""
    out = save_artifact(tmp_path / "art", pruned.program, {"label": "x"})
    # batch: export's 1..4096; sequence: up to the tiny model's max_position_embeddings (256)
    assert input_ranges(pruned.program) == input_ranges(load_program(out)) == ((1, 4096), (1, 256))
