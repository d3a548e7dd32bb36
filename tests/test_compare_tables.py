"""scripts/compare_tables.py: the same weights on two machines, cell by cell; other weights are refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_tables", ROOT / "scripts" / "compare_tables.py")
ct = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ct)


def table(path: Path, runs: dict, ours: list[float], device: str) -> Path:
    cfg = json.dumps({"experiment": "table1", "runs": runs})
    rows = [
        f"table1,fmnist,lenet5,{a},{p},ce,0.0,{o},0.0,run,1,,,,,"
        for (a, p), o in zip([("clean", "-"), ("pgd", "0.1"), ("pgd", "0.2")], ours, strict=True)
    ]
    head = "table,dataset,model,attack,param,method,paper,ours,diff,status,n_seeds,sd,ci95,pi95,in_pi95,per_seed"
    path.write_text(
        "\n".join([f"# device: {device}", "# commit: abc", f"# config: {cfg} (resolved config in x.md)", head, *rows])
        + "\n"
    )
    return path


def test_the_same_weights_are_compared_cell_by_cell_and_other_weights_are_refused(tmp_path, capsys):
    runs = {"fmnist/lenet5/ce": "fmnist-lenet5-ce-s0-aaa"}
    a = table(tmp_path / "a.csv", runs, [88.95, 29.66, 22.99], "cpu (AMD EPYC, AVX512, 2 threads)")
    b = table(tmp_path / "b.csv", runs, [88.95, 29.60, 22.90], "NVIDIA H200")
    out = tmp_path / "cmp.md"
    assert ct.main([str(a), str(b), "--out", str(out), "--zoo", str(tmp_path / "no-zoo")]) == 0
    text = out.read_text()
    assert "**3 cells; 1 identical; largest |B - A| 0.09 points; mean |B - A| 0.050 points**" in text
    assert "| table1 | fmnist | lenet5 | pgd | 0.1 | ce | 29.66 | 29.60 | -0.06 |" in text
    assert "- B `" in text and "NVIDIA H200; commit `abc`" in text
    assert "- weights trained on: not in the zoo (machine unknown) (1 runs" in text  # fake keys: no zoo entry
    other = table(tmp_path / "c.csv", {"fmnist/lenet5/ce": "fmnist-lenet5-ce-s0-bbb"}, [1.0, 2.0, 3.0], "gpu")
    assert ct.main([str(a), str(other), "--out", str(tmp_path / "no.md")]) == 2
    assert "do not name the same runs" in capsys.readouterr().err and not (tmp_path / "no.md").exists()
