"""pipeline.export's default dataset names: one per source, valid on Kaggle."""
import itertools

import pytest

from pipeline import export
from pipeline.config import make_config
from pipeline.errors import PipelineError

# Groups of sources whose names normalise to the same lower-case, dash-separated text.
COLLIDING = [
    [("e2",), ("E2",)],
    [("digit_cnn",), ("digit-cnn",), ("Digit.CNN",), ("digit", "cnn")],
    [("x" * 32 + "a",), ("x" * 32 + "b",)],
    [("a", "b_c"), ("a_b", "c"), ("a", "b", "c")],
    [("___",), ("_",), ("_+",)],
    [("weights",), ("1a2b3c4d",), ("r50", "weights")],
]


def default_slug(exps: tuple[str, ...], monkeypatch) -> str:
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    user, slug, _ = export.names(make_config({"exp": exps, "competition": "digit-recognizer"}))
    assert user == "alice"
    return slug


def test_default_slugs_differ_for_different_experiments(monkeypatch):
    sources = [exps for group in COLLIDING for exps in group]
    slugs = {exps: default_slug(exps, monkeypatch) for exps in sources}
    same = [(a, b, slugs[a]) for a, b in itertools.combinations(sources, 2) if slugs[a] == slugs[b]]
    assert same == []


@pytest.mark.parametrize("exps", [exps for group in COLLIDING for exps in group] + [("a" * 100,), ("A.b+c-d_e",)])
def test_default_slugs_are_valid_kaggle_dataset_slugs(exps, monkeypatch):
    slug = default_slug(exps, monkeypatch)
    make_config({"dataset": f"alice/{slug}"})  # --dataset's own rule: 6-40 lower-case letters, digits, dashes
    assert not slug.startswith("-") and not slug.endswith("-") and "--" not in slug


def test_plain_names_keep_their_readable_slug(monkeypatch):
    assert default_slug(("digit", "cnn2"), monkeypatch) == "digit-cnn2-weights"
    assert default_slug(("r50",), monkeypatch) == "r50-weights"
    assert default_slug(("E2",), monkeypatch).startswith("e2-")  # the readable part stays, a hash tells them apart


def manifest(*exps: str) -> dict:
    return {"experiments": list(exps), "dataset": "alice/x-weights", "ensemble": "mean"}


def test_an_export_of_the_same_experiments_is_replaced_and_links_are_not_followed(tmp_path):
    """A rerun (after a kill -9 too) clears the parts it writes; a symlinked part goes, not what it points to."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("not the export's")
    folder = export.fresh_folder(tmp_path / "x-weights", manifest("a", "b"))
    (folder / "weights" / "a").mkdir(parents=True)
    (folder / "notes.txt").write_text("the user's")
    (folder / "code").symlink_to(target)
    assert export.fresh_folder(folder, manifest("b", "a")) == folder
    assert sorted(p.name for p in folder.iterdir()) == ["export.json", "notes.txt"]
    assert (target / "keep.txt").read_text() == "not the export's"
    assert export.held_experiments(folder) == ["b", "a"]


def test_an_empty_folder_is_taken_as_new(tmp_path):
    """What a kill -9 between creating the folder and writing its manifest leaves."""
    (tmp_path / "x-weights").mkdir()
    export.fresh_folder(tmp_path / "x-weights", manifest("a"))
    assert export.held_experiments(tmp_path / "x-weights") == ["a"]


@pytest.mark.parametrize("content, message", [
    (None, "exists and was not made by pipeline.export (no export.json)"),
    ("legacy", "made by an earlier pipeline.export that did not record its experiments"),
    ('{"experiments": "a"}', "export.json: expected a JSON object whose experiments is a list of names"),
    ("{not json", "export.json: expected a JSON object whose experiments is a list of names"),
    ('{"experiments": ["E2"]}', "holds the export of E2 (export.json), not of e2; choose another --dataset"),
])
def test_a_folder_holding_something_else_is_refused_and_kept(tmp_path, content, message):
    folder = tmp_path / "e2-weights"
    (folder / "weights").mkdir(parents=True)
    if content == "legacy":
        (folder / export.LEGACY_MARKER).write_text("made by python -m pipeline.export\n")
    elif content is not None:
        (folder / "export.json").write_text(content)
    with pytest.raises(PipelineError) as e:
        export.fresh_folder(folder, manifest("e2"))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert (folder / "weights").is_dir()
