import json

from recutils import report


def test_readme_tables_match_results():
    assert report.update_readme(check=True), "run `python -m recutils.report` and commit README.md"


def test_render_lists_claims_and_methods(tmp_path):
    (tmp_path / "results").mkdir()
    rec = {"records": {"claims": [{"claim": "A | B", "paper": "1", "ours": "2", "holds": "no"}],
                       "methods": {"SASRec": {"metrics": {"full/NDCG@10": 0.061234}, "n_users": 943}}}}
    (tmp_path / "results" / "00_default.json").write_text(json.dumps(rec))
    (tmp_path / "results" / "00_smoke.json").write_text(json.dumps(rec))  # ignored
    text = report.render(tmp_path)
    assert "| 00 | A \\| B | 1 | 2 | no |" in text
    assert "| 00 | SASRec | 943 | 0.0612 |" in text and text.count("SASRec") == 1
    (tmp_path / "README.md").write_text(f"x\n{report.START}\nold\n{report.END}\ny\n")
    assert not report.update_readme(tmp_path, check=True)
    assert not report.update_readme(tmp_path)          # rewrites
    assert report.update_readme(tmp_path, check=True)  # now up to date
    assert (tmp_path / "README.md").read_text().startswith("x\n") and "0.0612" in (tmp_path / "README.md").read_text()
