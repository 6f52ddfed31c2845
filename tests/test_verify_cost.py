"""The verification-cost table feeds the tree builder's size choice."""

from __future__ import annotations

import json

from vllm_nfoxhead.tools.tree_builder import main as build_main
from vllm_nfoxhead.tools.verify_cost import main


def test_cost_table_is_written_and_usable(tiny_assets, tmp_path, capsys):
    out = tmp_path / "cost.json"
    main(["--model", str(tiny_assets[0]), "--out", str(out), "--sizes", "1", "4", "16",
          "--context", "32", "--repeats", "3", "--dtype", "float32"])
    costs = {int(k): v for k, v in json.loads(out.read_text()).items()}
    assert set(costs) == {1, 4, 16} and all(c > 0 for c in costs.values())
    acc = tmp_path / "acc.json"
    acc.write_text(json.dumps([[0.6, 0.2, 0.1], [0.5, 0.2, 0.1], [0.4, 0.2, 0.1]]))
    assert build_main(["--accuracies", str(acc), "--cost-table", str(out)]) == 0
    assert "[0]" in capsys.readouterr().out
