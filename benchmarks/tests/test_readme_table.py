"""The README's results table is generated from the committed summaries (benchmarks.readme_table)."""


def test_the_readme_is_short_and_its_results_table_is_what_the_summaries_say():
    from benchmarks.readme_table import REPO, main

    assert len((REPO / "README.md").read_text().splitlines()) <= 150
    assert main(["--check"]) == 0, "README.md's results table differs from the summaries: run python -m benchmarks.readme_table"
