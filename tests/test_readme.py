"""The README's API example runs as printed and does what its text says.

The block is read from README.md (the first ```python fence under "## API") and executed as is,
so an edit of the README that breaks it, or a change of the library that the README does not
follow, fails here.
"""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def api_example() -> str:
    text = README.read_text()
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "README.md: no ```python block under '## API'"
    return blocks[0]


def test_readme_api_example_trains_and_prunes(capsys):
    namespace: dict = {}
    exec(compile(api_example(), str(README), "exec"), namespace)
    accuracy, params, pruned = namespace["accuracy"], namespace["params"], namespace["pruned"]
    import jax
    import numpy as np

    # 90 % of the kernel entries (the leaves of rank >= 2) are exactly zero after the mask ...
    kernels = [np.asarray(w) for w in jax.tree.leaves(pruned) if np.ndim(w) >= 2]
    sizes = [w.size for w in kernels]
    zeros = [int(np.sum(w == 0)) for w in kernels]
    assert abs(sum(zeros) / sum(sizes) - 0.9) < 0.01
    # ... and the one-shot pruned network keeps the dense accuracy (the README's claim).
    dense, sparse = accuracy(params), accuracy(pruned)
    assert dense > 0.9, dense
    assert sparse > dense - 0.02, (dense, sparse)
    out = capsys.readouterr().out
    assert re.fullmatch(r"dense 0\.\d{3}, 90 % pruned 0\.\d{3}\n", out), out
