"""The documents' figures are backed by files (issue 28): the README's generated tables are
exactly what `make report` renders from the committed results/*.json, and every relative link
of the documents names a file of the repository."""
import math
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


# --- every figure of the prose has a source file beside it ------------------------------------

PROSE_DOCUMENTS = ["README.md", "BUILD.md"]
PUBLISHED = "results/published.json"  # the seeds', papers' and recipes' figures, always a source
SOURCE = re.compile(r"(?<![\w/])((?:results|configs|tests/fixtures)/[\w./-]*[\w/])")
NUMBER = r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+\.\d+(?:e-?\d+)?|\d+"
UNIT = r"%|x\b| ?tokens/s\b| ?req/s\b| ?ms\b| ?s\b| ?min\b| ?h\b| ?GFLOP/s\b| ?GB/s\b| ?MB\b| ?M\b"
FIGURE = re.compile(rf"(~)?(?<![\w.,/=-])({NUMBER})(?![\w.]\d)({UNIT})?")
# Numbers that are names, not measurements: versions, sections, addresses.
NOT_A_MEASUREMENT = re.compile(r"(python|tensorflow|keras|tensorflow-datasets|cpython|torch|"
                               r"section|sections|arxiv:|equation|eq\.|issue|issues|commit|"
                               r"version|cuda|cudnn|ubuntu|debian)[ =]*$", re.I)
SCALES = {"%": (100.0, 1.0), "min": (1 / 60, 1.0), "h": (1 / 3600, 1 / 60, 1.0),
          "ms": (1000.0, 1.0), "s": (1.0,), "GB/s": (1e-9, 1.0), "MB": (1e-6, 2.0 ** -20, 1.0),
          "M": (1e-6, 1.0), "x": (1.0,), "tokens/s": (1.0,), "req/s": (1.0,),
          "GFLOP/s": (1e-9, 1.0), "": (1.0,)}


def _numbers(value, out):
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, (int, float)):
        out.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, out)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, out)
    else:
        out.extend(float(n.replace(",", "")) for n in re.findall(NUMBER, str(value)))


def _source_numbers(names) -> list:
    """Every number in the named files, as a sorted list (a folder names no figure: a claim
    links the file it comes from)."""
    import json
    out = []
    for name in names:
        file = REPO / name
        if file.is_file() and file.suffix in (".json", ".cfg", ".txt"):
            text = file.read_text(encoding="utf-8")
            if file.suffix == ".cfg":  # a config's settings, not the figures of its comments
                text = "\n".join(line for line in text.splitlines() if line.startswith("--"))
            _numbers(json.loads(text) if file.suffix == ".json" else text, out)
    return sorted({v for v in out if math.isfinite(v)})  # a NaN would unsort the list


def _near(sorted_values, target, tolerance) -> bool:
    import bisect
    i = bisect.bisect_left(sorted_values, target - tolerance)
    return i < len(sorted_values) and sorted_values[i] <= target + tolerance


def _backed(text: str, approximate: bool, unit: str, values: list, printed=()) -> bool:
    """Whether a printed figure is one of the source numbers, rounded as printed (within 15%
    when marked ~); a % or x may also be the share, change or ratio of two other figures
    `printed` in the same sentence (measurements, not shares or ratios themselves; each must
    be backed itself)."""
    value = float(text.replace(",", ""))
    decimals = len(text.split(".")[1]) if "." in text and "e" not in text else 0
    tolerance = 0.5 * 10 ** -decimals + 1e-9 if "e" not in text else abs(value) * 0.05
    for scale in SCALES[unit]:
        if approximate:
            if any(abs(v * scale - value) <= 0.15 * value for v in values):
                return True
        elif _near(values, value / scale, tolerance / scale):
            return True
    if unit in ("%", "x"):
        targets = [value] if unit == "x" else [value / 100, 1 + value / 100, 1 - value / 100]
        for target in targets:
            slack = max(tolerance / (100 if unit == "%" else 1), 0.006 * target)
            if any(b > 0 and abs(a / b - target) <= slack for a in printed for b in printed):
                return True
    return False


def _paragraphs(text: str):
    """Paragraphs, list items and table rows (with their header) of a document, without its
    generated block and code blocks (their figures are checked by the test above or are
    commands)."""
    text = re.sub(re.escape(readme_tables.START) + ".*?" + re.escape(readme_tables.END), "",
                  text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    units = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.strip().splitlines()
        if lines and all(line.startswith("|") for line in lines):  # a table: rows, each with
            units += [f"{line}\n{lines[0]}" for line in lines[2:]]  # the header's sources
        else:
            units += [p for p in re.split(r"\n(?=\s*- )", block) if p.strip()]
    return units


def unbacked_figures(document: str) -> list:
    """The figures of a document's prose that no file named in the same paragraph (or
    results/published.json) holds. A config's comments are one paragraph whose sources
    include the config itself (its settings)."""
    text = (REPO / document).read_text(encoding="utf-8")
    return unbacked_in(text, config=document if document.endswith(".cfg") else None)


def _prose_figure(number: str, unit: str) -> bool:
    """Which figures of the documents are checked: any with a unit or decimals; counts and
    settings ("3 layers", "batch 40") are not."""
    return bool(unit or "." in number or "," in number)


def _code_figure(number: str, unit: str) -> bool:
    """Which figures of docstrings and comments are checked: speeds and ratios, and times or
    shares with decimals (measured, not settings such as "25 ms frames" or "lr 30")."""
    return unit in ("tokens/s", "req/s", "GFLOP/s", "GB/s", "x") or (
        "." in number and unit in ("%", "ms", "s", "min", "h"))


def unbacked_in(text: str, config=None, checked=_prose_figure, paragraphs=None) -> list:
    """`unbacked_figures` of a text (`config`: the config file the text is; `paragraphs`:
    the text's units, by default its paragraphs as a document has them)."""
    missing = []
    for paragraph in [text] if config else (paragraphs or _paragraphs(text)):
        values = _source_numbers([PUBLISHED, *SOURCE.findall(paragraph),
                                  *([config] if config else [])])
        prose = re.sub(r"`[^`]*`", " ", paragraph)  # commands and flags are not figures
        prose = re.sub(r"\]\([^)]*\)", "]", prose)  # nor are link targets
        for match in FIGURE.finditer(prose):
            approximate, number, unit = match.group(1), match.group(2), (match.group(3) or "")
            unit = unit.strip()
            if not checked(number, unit):
                continue
            if NOT_A_MEASUREMENT.search(prose[:match.start()]) or re.match(
                    r"\.\d", prose[match.end():]):
                continue
            sentence = re.split(r"[.;:]\s", prose[:match.start()])[-1] + re.split(
                r"[.;:]\s", prose[match.start():])[0]
            printed = [float(m.group(2).replace(",", "")) for m in FIGURE.finditer(sentence)
                       if "e" not in m.group(2) and (m.group(3) or "") not in ("%", "x")]
            if not _backed(number, bool(approximate), unit, values, printed):
                where = " ".join(prose[max(0, match.start() - 50):match.end() + 15].split())
                missing.append(f"{approximate or ''}{number}{unit}: ...{where}...")
    return missing


@pytest.mark.parametrize("document", PROSE_DOCUMENTS + sorted(
    str(p.relative_to(REPO)) for p in (REPO / "configs").glob("*.cfg")))
def test_every_figure_of_the_prose_has_its_source_file_in_its_paragraph(document):
    """A figure typed into a document must be a number of a committed file that its paragraph
    names (a results JSON, a config, results/published.json for others' figures), rounded as
    printed; a share or ratio of two of its numbers for % and x; within 15% when marked ~."""
    missing = unbacked_figures(document)
    assert not missing, (f"{document}: {len(missing)} figures without a source file in their "
                         "paragraph:\n" + "\n".join(missing))


def test_the_figure_check_catches_a_typed_figure_and_accepts_a_sourced_one():
    values = _source_numbers(["results/las_an4_ab.json"])
    assert _backed("5.85", False, "%", values)  # test_joint cer 0.05847...
    assert not _backed("5.83", False, "%", values)  # a typo
    assert _backed("1,180", False, "", values)  # train_seconds 1180.4
    assert _backed("20", True, "min", [1180.4]) and not _backed("25", True, "min", [1180.4])
    assert _backed("2.18", False, "x", [], printed=[11887.0, 5450.0])  # a ratio of two figures
    assert not _backed("2.5", False, "x", [], printed=[11887.0, 5450.0])
    assert not _backed("1.5", False, "x", [], printed=[])  # a ratio from nowhere
    config = _source_numbers(["configs/las_an4.cfg"])
    assert 0.5 in config and 5.26 not in config  # its settings, not its comments' figures


def test_a_paragraph_without_its_source_fails():
    """The check itself, on a text of three paragraphs: a figure with its file passes, a figure
    whose file is named only in another paragraph does not, a published figure passes."""
    text = ("Joint decoding reached 5.85% CER ([json](results/las_an4_ab.json)).\n\n"
            "It also reached 12.29% WER.\n\nThe seed's AWD-LSTM row is 77.11.\n")
    assert [m.split(":")[0] for m in unbacked_in(text)] == ["12.29%"]
    assert unbacked_in("Python 3.11, section 4.1, `--lr=0.002`, issue 29, 3 layers.") == []


# --- and every measured figure of a docstring or comment ---------------------------------------

CODE = ["main.py", "tfawd/**/*.py", "pipelines/*.py", "benchmarks/*.py"]


def code_texts(path: pathlib.Path) -> list:
    """The docstrings and comment blocks (consecutive comment lines) of a Python file, each
    without its quoted examples ('valid ppl 98.20' shows a format, not a result)."""
    import ast
    import io
    import tokenize
    source = path.read_text(encoding="utf-8")
    texts = [ast.get_docstring(node) for node in ast.walk(ast.parse(source)) if isinstance(
        node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
    block, last = [], -1
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            if tok.start[0] != last + 1 and block:
                texts.append(" ".join(block))
                block = []
            block.append(tok.string.lstrip("#").strip())
            last = tok.start[0]
    texts.append(" ".join(block))
    return [" ".join(re.sub(r"'[^'\n]*'|\"[^\"\n]*\"", " ", t).split()) for t in texts if t]


def unbacked_in_code(path: pathlib.Path) -> list:
    """The measured figures (speeds, ratios, times and shares with decimals) of a file's
    docstrings and comments that no file named in the same docstring or comment holds."""
    return [m for text in code_texts(path)
            for m in unbacked_in(text, checked=_code_figure, paragraphs=[text])]


@pytest.mark.parametrize("pattern", CODE)
def test_every_measured_figure_of_the_code_has_its_source_file_beside_it(pattern):
    """A speed, ratio or measured time typed into a docstring or comment names the committed
    file that holds it (a results JSON), as the documents' figures do."""
    missing = [f"{p.relative_to(REPO)}: {m}" for p in sorted(REPO.glob(pattern))
               for m in unbacked_in_code(p)]
    assert not missing, f"{len(missing)} figures without a source file:\n" + "\n".join(missing)


def test_the_code_check_reads_docstrings_and_comment_blocks(tmp_path):
    code = tmp_path / "m.py"
    code.write_text('''"""A step of 0.98x the reference; frames of 25 ms."""
# Measured: 1,945 tokens/s
# (results/lm_throughput_awd_lstm_wt2_bf16_amd_epyc.json: 2,536 tokens/s).

# e.g. 'valid ppl 98.20' and "2.5x"
x = 1  # 0.25 s a step
''', encoding="utf-8")
    assert [m.split(":")[0] for m in unbacked_in_code(code)] == ["0.98x", "1,945tokens/s",
                                                                "0.25s"]
