"""docs/api.md's Python blocks run in order as one script (as the page says), so an edit of the
page or of the library that breaks an example fails here."""

from __future__ import annotations

import pathlib
import re

from sfw_jax.fw import _registry as registry

API_MD = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api.md"


def test_api_md_blocks_run_as_one_script(capsys):
    blocks = re.findall(r"```python\n(.*?)```", API_MD.read_text(), flags=re.S)
    assert len(blocks) >= 5
    before = set(registry.KINDS)
    namespace: dict = {}
    try:
        exec(compile("\n".join(blocks), str(API_MD), "exec"), namespace)
    finally:                        # the page registers a kind: leave the registry as it was
        for name in set(registry.KINDS) - before:
            registry._REGISTRY.pop(name)
    import sfw_jax
    assert sfw_jax.contains_all(namespace["params"], namespace["constraints"])
    assert "filter_l2" not in registry.KINDS
    assert "sfw init: leaf 'bias' is Unconstrained()" in capsys.readouterr().out
