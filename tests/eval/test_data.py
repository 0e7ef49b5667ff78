"""The evaluation data that ships with the project (data/), how it is found, and its checksums."""

import shutil

import pytest

from actprune_compiler.eval import data
from actprune_compiler.eval.data import (
    CHECKSUMS,
    DATA_ENV,
    PROJECT_DATA_DIR,
    TASK_FILES,
    WIKITEXT_DIR,
    default_data_dirs,
    find_data_dir,
    load_wikitext2,
    task_data,
    verify_data_dir,
)

# The raw test file rebuilt from the document-level copy (data/SOURCES.md; also asserted in test_eval.py).
WIKITEXT2_TEST_SHA256 = "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08"
WIKITEXT2_VALIDATION_SHA256 = "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7"
SEED_TASKS = ("arc_easy", "boolq", "piqa", "winogrande")


def listed_files() -> list[str]:
    return [line.split("  ", 1)[1] for line in (PROJECT_DATA_DIR / CHECKSUMS).read_text().splitlines() if line]


def test_project_data_folder_is_beside_the_package_not_inside_it():
    assert PROJECT_DATA_DIR.is_dir(), f"the project's data folder {PROJECT_DATA_DIR} is missing"
    assert (PROJECT_DATA_DIR.parent / "pyproject.toml").is_file()
    assert "actprune_compiler" not in PROJECT_DATA_DIR.parts


def test_project_data_is_found_first_without_the_env_var(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert default_data_dirs()[0] == PROJECT_DATA_DIR
    assert find_data_dir() == PROJECT_DATA_DIR
    for task in SEED_TASKS:
        assert task_data(task) == {rel: PROJECT_DATA_DIR / rel for rel in TASK_FILES[task]}


def test_env_var_and_explicit_folder_come_before_the_project_data(monkeypatch, tmp_path):
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    assert default_data_dirs()[:2] == [tmp_path, PROJECT_DATA_DIR]
    assert find_data_dir() == tmp_path
    other = tmp_path / "other"
    other.mkdir()
    assert find_data_dir(other) == other


def test_missing_data_message_names_the_project_data_folder_first(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    message = str(data._missing("WikiText-2 test split", f"{WIKITEXT_DIR}/test"))
    assert message.startswith(f"WikiText-2 test split not found: put it at DATA/{WIKITEXT_DIR}/test with DATA "
                               f"the project's data folder {PROJECT_DATA_DIR} ")
    assert message.index(str(PROJECT_DATA_DIR)) < message.index(DATA_ENV) < message.index(str(data.SHARED_DATA_DIR))


def test_shipped_data_matches_its_checksums():
    assert verify_data_dir(PROJECT_DATA_DIR) == []
    assert verify_data_dir() == []  # the default is the project's folder


def test_every_shipped_file_is_checksummed_and_every_seed_file_is_shipped():
    shipped = {p.relative_to(PROJECT_DATA_DIR).as_posix() for p in PROJECT_DATA_DIR.rglob("*") if p.is_file()}
    listed = listed_files()
    assert len(listed) == len(set(listed))
    assert shipped - set(listed) == {CHECKSUMS, "SOURCES.md", ".gitattributes"}
    assert set(listed) <= shipped
    needed = {rel for task in SEED_TASKS for rel in TASK_FILES[task]}
    assert needed <= set(listed)
    for split in ("test", "validation"):
        assert f"{WIKITEXT_DIR}/{split}/data-00000-of-00001.arrow" in listed
    sources = (PROJECT_DATA_DIR / "SOURCES.md").read_text()
    for line in (PROJECT_DATA_DIR / CHECKSUMS).read_text().splitlines():
        digest, name = line.split("  ", 1)
        assert digest in sources, f"{name}'s sha256 is not in data/SOURCES.md"
        assert str((PROJECT_DATA_DIR / name).stat().st_size) in sources


def test_verify_data_dir_reports_changed_missing_and_malformed(tmp_path):
    assert verify_data_dir(tmp_path) == [f"{tmp_path / CHECKSUMS}: missing"]
    for rel in ("piqa/valid-labels.lst", "arc_easy/ARC-Easy-Test.jsonl"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PROJECT_DATA_DIR / rel, tmp_path / rel)
    lines = [line for line in (PROJECT_DATA_DIR / CHECKSUMS).read_text().splitlines()
             if line.endswith(("piqa/valid-labels.lst", "arc_easy/ARC-Easy-Test.jsonl", "piqa/valid.jsonl"))]
    (tmp_path / CHECKSUMS).write_text("\n".join([*lines, "not a checksum line"]) + "\n")
    with (tmp_path / "piqa/valid-labels.lst").open("ab") as f:
        f.write(b"0\n")
    problems = verify_data_dir(tmp_path)  # in the order of the checksums file
    assert len(problems) == 3, problems
    assert problems[0].startswith("piqa/valid-labels.lst: sha256 ") and problems[0].endswith(
        "expected b4192dc3a2a0363d9d60ccf79800cbbe2f32ebb17726efdde6970e0b8131bceb")
    assert problems[1] == "piqa/valid.jsonl: missing"
    assert "not a `sha256sum` line" in problems[2]


def test_shipped_wikitext_is_the_raw_text_of_sources_md(monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    test = load_wikitext2("test")
    assert test.sha256 == WIKITEXT2_TEST_SHA256
    assert test.source.startswith(str(PROJECT_DATA_DIR / WIKITEXT_DIR / "test"))
    assert load_wikitext2("validation", PROJECT_DATA_DIR).sha256 == WIKITEXT2_VALIDATION_SHA256


def test_wikitext_text_is_the_hubs_rows_joined_as_the_seed_does(monkeypatch):
    """The hub's builder yields whitespace-only lines as "" (row counts 4358 / 3760 are the hub's); the seed
    joins the rows with "\n\n". Keeping blank rows as " \n" would change the text and ppl by ~2%."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    test = load_wikitext2("test")
    assert test.rows == 4358 and load_wikitext2("validation").rows == 3760
    # row 0 and row 2 are blank lines of the raw file (" \n"): empty rows, so only the separators remain
    assert test.text.startswith("\n\n = Robert Boulter = \n\n\n\n\n Robert Boulter is an English")
    assert test.text_sha256 == "696cca6b65a171b0a358a4be6732cdfdf2dd6164a32e20fd70e3c13fc4dfae83"
    assert data.hub_rows(" \n = A = \n \n text \n") == ["", " = A = \n", "", " text \n"]


@pytest.mark.parametrize("task,rows", [("arc_easy", 2376), ("boolq", 3270), ("piqa", 1838), ("winogrande", 1267)])
def test_shipped_task_files_have_the_documented_sizes(task, rows):
    files = task_data(task, PROJECT_DATA_DIR)
    assert files is not None
    assert len(data.TO_HUB_SCHEMA[task](files)) == rows


def test_missing_data_lists_what_is_not_local(tmp_path):
    assert data.missing_data(("wikitext2", *SEED_TASKS), PROJECT_DATA_DIR, "wikitext2-validation") == []
    assert data.missing_data(("arc_challenge",), PROJECT_DATA_DIR) == [
        "arc_challenge (DATA/arc_challenge/ARC-Challenge-Test.jsonl)"]  # not shipped: lm-eval's hub task
    (tmp_path / "piqa").mkdir()
    (tmp_path / "piqa" / "valid.jsonl").write_text("{}\n")
    assert data.missing_data(("wikitext2", "piqa"), tmp_path, "wikitext2-train") == [
        f"WikiText-2 test split (DATA/{WIKITEXT_DIR}/test)", f"WikiText-2 train split (DATA/{WIKITEXT_DIR}/train)",
        "piqa (DATA/piqa/valid-labels.lst)"]
    assert data.missing_data(("boolq",), tmp_path, str(tmp_path / "calib.txt")) == [  # a file is its flag's job
        "boolq (DATA/boolq/superglue_opencompass/val.jsonl)"]


def test_prepared_task_files_are_written_atomically_under_a_name_of_their_own(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "CACHE_DIR", tmp_path)
    written = []
    real = data.atomic_write
    monkeypatch.setattr(data, "atomic_write", lambda path, write: (written.append(path), real(path, write)))
    files = task_data("piqa", PROJECT_DATA_DIR)
    target = data.prepared_task_file("piqa", files)
    assert written == [target] and target.parent == tmp_path / "data"
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left behind
    assert len(target.read_text().splitlines()) == 1838
    assert data.prepared_task_file("piqa", files) == target and written == [target]  # cached: not rewritten
