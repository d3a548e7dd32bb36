"""Issue 26 item 3: every number README's results section (and results/README.md, the findings in full) quotes
is held by a committed results file named beside it. Before this check results/README.md quoted PC+LC's
margin-PGD 26.4 / 20.2 / 16.0, the substitute's saturation 38.4%, another machine's seed-0 transfer cells, none
of them in any committed file."""

from __future__ import annotations

from pathlib import Path

import pytest

from pclc.quoted import holds, main, quoted_numbers, units, unsourced

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("doc", ["README.md", "results/README.md", "docs/performance.md"])
def test_the_readmes_quote_only_numbers_held_by_the_files_they_name(doc):
    assert unsourced(ROOT / doc, ROOT / "results") == []


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    (r / "seeds").mkdir(parents=True)
    (r / "table1.md").write_text("| pgd 0.1 | **11.0** (15.7, -4.7) | 29.7 |\n")
    (r / "table1.csv").write_text("attack,eps,method,accuracy\npgd,0.1,pclc,11.040000915527344\n")
    (r / "seeds" / "table1.md").write_text("PGD 17.1 ± 6.2 [0.4, 33.8] n=5\n")
    return r


def check(results: Path, text: str) -> list[str]:
    doc = results / "README.md"
    doc.write_text(text)
    return [p.split(": ", 1)[1] for p in unsourced(doc, results)]


def test_a_number_its_named_file_holds_passes_and_one_it_does_not_is_named(results):
    assert check(results, "PC+LC keeps 11.0 under PGD (`table1.md`).\n") == []
    assert check(results, "PC+LC keeps 12.0 under PGD (`table1.md`).\n") == ["12.0 is in none of table1.md"]


def test_a_number_beside_no_file_fails_and_a_missing_file_is_named(results):
    assert check(results, "PC+LC keeps 11.0 under PGD.\n") == ["11.0 is quoted beside no results file"]
    assert check(results, "PC+LC keeps 11.0 (`table9.md`).\n") == [
        "names table9.md, which does not exist",
        "11.0 is in none of table9.md",
    ]


def test_digits_quoted_must_round_from_the_file_and_md_reads_its_csv(results):
    assert check(results, "PGD 11.04 (`table1.md`), 11.0 (`results/table1.csv`).\n") == []
    assert check(results, "PGD 11.05 (`table1.md`).\n") == ["11.05 is in none of table1.md"]
    assert holds([68.004], "68.00") and holds([68.004], "68.0") and holds([68.0], "68.00")
    assert not holds([68.004], "68.1") and not holds([68.06], "68.0")


def test_column_headers_and_headings_name_files_for_what_is_beneath(results):
    table = "| claim | here (`table1.md`) | seeds |\n|---|---|---|\n| PGD | 11.0 vs 29.7 | 17.1 |\n"
    assert check(results, table) == ["17.1 is quoted beside no results file"]
    assert check(results, table.replace("| seeds |", "| seeds (`seeds/`) |")) == []
    assert check(results, "### Seeds (`seeds/table1.md`)\n\n- PGD 17.1 ± 6.2.\n") == []
    assert check(results, "### Seeds (`seeds/table1.md`)\n\n- PGD 17.2 ± 6.2.\n") == [
        "17.2 is in none of seeds/table1.md"
    ]


def test_a_name_under_a_heading_that_names_a_folder_is_that_folders_file(results):
    """docs/performance.md's GPU section: the heading names ``results/gpu-check-<gpu>/`` and its paragraphs name
    ``summary.md`` and ``tables/table1.md`` inside it (the old check called them missing)."""
    (results / "seeds" / "summary.md").write_text("PGD 17.1 over five seeds\n")
    assert check(results, "### Seeds (`results/seeds/`)\n\n- PGD 17.1 (`summary.md`).\n") == []
    # the folder's own file, not the results folder's file of the same name
    assert check(results, "### Seeds (`seeds/`)\n\n- PGD 11.0 (`table1.md`).\n") == [
        "11.0 is in none of table1.md, seeds/"
    ]
    assert check(results, "### Seeds\n\n- PGD 17.1 (`summary.md`).\n") == [
        "names summary.md, which does not exist",
        "17.1 is in none of summary.md",
    ]


def test_settings_integers_code_and_versions_are_not_quoted_measurements():
    text = "At ε 0.1 / 0.2 / 0.3, lr 0.01, step 2.5ε, `lr=0.123`, torch 2.14.1, 5 seeds, LGPL-3.0: PGD 11.04%."
    assert quoted_numbers(text) == [("11.04", False)]
    assert quoted_numbers("it keeps 11.0; flr 0.5") == [("11.0", False), ("0.5", False)]  # "eps", "lr" as words
    assert units("```\nPGD 12.34\n```\n") == []


def test_the_papers_numbers_may_be_held_by_the_paper(results):
    assert quoted_numbers("(paper 90.2), the paper's 0.2 / 21.8, PC+LC 18.7") == [
        ("90.2", True),
        ("0.2", True),
        ("21.8", True),
        ("18.7", False),
    ]
    assert check(results, "PC+LC keeps clean accuracy (paper 90.2) and 11.0 (`table1.md`).\n") == []
    assert check(results, "PC+LC (paper 12.345) and 11.0 (`table1.md`).\n") == ["12.345 is in none of table1.md"]
    table = "| the paper claims | here |\n|---|---|\n| PC+LC 90.2 vs CE 90.1 | 11.0 (`table1.md`) |\n"
    assert check(results, table) == []


def test_the_command_line_exits_1_on_an_unsourced_number(results, capsys):
    doc = results / "README.md"
    doc.write_text("PGD 11.0 (`table1.md`).\n")
    assert main([str(doc), "--root", str(results)]) == 0
    doc.write_text("PGD 13.0 (`table1.md`).\n")
    assert main([str(doc), "--root", str(results)]) == 1
    assert "13.0 is in none of table1.md" in capsys.readouterr().out
