"""The documents' figures are backed by files (issue 28): the README's generated tables are
exactly what `make report` renders from the committed results/*.json, and every relative link
of the documents names a file of the repository."""
import pathlib
import re

import pytest

from tfawd.core import readme_tables

REPO = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", "BUILD.md", "benchmarks/README.md", "results/before_after/README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_the_generated_tables_are_those_of_the_committed_results(monkeypatch):
    """A hand-edited figure, or a results file changed without `make report`, fails here."""
    monkeypatch.chdir(REPO)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start, end = text.index(readme_tables.START), text.index(readme_tables.END)
    committed = text[start:end + len(readme_tables.END)]
    assert committed == readme_tables.render("results"), (
        "README.md's generated block differs from the results/*.json: run `make report`")


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_names_a_file_of_the_repository(document):
    path = REPO / document
    if not path.exists():
        pytest.fail(f"{document} is listed here but missing")
    missing = []
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue  # a URL or an anchor
        file = (path.parent / target.split("#")[0]).resolve()
        if not file.exists():
            missing.append(target)
    assert not missing, f"{document} links to missing files: {missing}"


def test_every_results_file_the_readme_names_exists():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    named = set(re.findall(r"\bresults/[\w./-]+\.(?:json|png|npy)", text))
    assert named, "the README names no results file"
    missing = sorted(p for p in named if not (REPO / p).exists())
    assert not missing, f"README.md names missing results: {missing}"


def test_commands_in_the_documents_run_as_written_on_any_clone():
    """No run folder of the machine that made a result (/root/...) in a shown command."""
    from tfawd.core.readme_tables import as_typed_here
    assert as_typed_here("main.py --model_dir=/root/tfawd-runs/x/finetune --mode=evaluate") == (
        "python main.py --model_dir=runs/x/finetune --mode=evaluate")
    assert as_typed_here("main.py --model_dir=/data/exp/y/") == "python main.py --model_dir=runs/y"
    assert as_typed_here("main.py --model_dir=runs/z") == "python main.py --model_dir=runs/z"
    for document in ("README.md", "BUILD.md"):
        text = (REPO / document).read_text(encoding="utf-8")
        assert "/root/" not in text, f"{document} shows a /root path"
