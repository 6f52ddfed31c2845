"""Named trees in `medusa_choices` notation, read from `tree_presets.json` beside this module.

The trees are data (the public Medusa presets, copied verbatim from FasterDecoding/Medusa,
plus small CPU ones; the JSON file says where each comes from), so they live in a data
file and this module only loads them. A path [a, b, c] is: top-a token of head 0, then
top-b of head 1, then top-c of head 2 (ranks are 0-based). `PRESETS` maps each name to its
list of paths; `vllm_nfoxhead.core.tree.parse_tree` accepts these names.
"""

from __future__ import annotations

import json
from pathlib import Path

Paths = list[list[int]]

PRESETS_FILE = Path(__file__).with_name("tree_presets.json")


def load_presets(path: Path = PRESETS_FILE) -> dict[str, Paths]:
    """Name -> paths, in file order."""
    return json.loads(path.read_text(encoding="utf-8"))["presets"]


PRESETS: dict[str, Paths] = load_presets()
