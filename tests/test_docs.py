"""The user documentation in the repository: current with the code, self-contained, and its example runs."""

from __future__ import annotations

import re

import torch

from kdbench.docs import methods_markdown
from kdbench.loss import METHODS, LossContext, Progress
from tests_support import REPO


def test_methods_doc_is_generated_from_the_current_code():
    written = (REPO / "docs" / "methods.md").read_text()
    assert written == methods_markdown(), "docs/methods.md is stale: run `kdbench methods --markdown > docs/methods.md`"
    for name in METHODS.names():
        builtin = METHODS.get(name).__module__.startswith("kdbench.methods.")
        assert (f"## `{name}`" in written) == builtin
    assert "| `nce_k` | `16384` |" in written  # CRD's defaults table, from CRD.defaults


def test_user_facing_files_do_not_point_to_design_notes_users_do_not_have():
    files = [REPO / "README.md", *(REPO / "docs").glob("*.md"), *(REPO / "experiments").glob("*.yaml"),
             *(REPO / "kdbench").rglob("*.py"), *(REPO / "methods").glob("*.py")]
    offenders = [f"{path.relative_to(REPO)}: {match}" for path in files
                 for match in re.findall(r"(?:PROTOCOL|METHODS|ARCHITECTURE)\.md|design/", path.read_text())]
    assert not offenders, offenders


def test_the_plugin_example_registers_and_computes_a_loss():
    text = (REPO / "docs" / "plugins.md").read_text()
    example = re.search(r"```python\n(.*?)```", text, re.S).group(1).replace('"my_kd"', '"docs_example_kd"')
    exec(compile(example, "docs/plugins.md", "exec"), {})
    method_class = METHODS.get("docs_example_kd")
    loss = method_class(LossContext(num_classes=5, class_counts=[4] * 5))
    generator = torch.Generator().manual_seed(0)
    student = {"logits": torch.randn(6, 5, generator=generator, requires_grad=True)}
    teacher = {"logits": torch.randn(6, 5, generator=generator)}
    batch = {"target": torch.randint(0, 5, (6,), generator=generator)}
    terms = loss(student, teacher, batch, Progress(epoch=1, epochs=2))
    assert set(terms) == {"ce", "kd"} and all(torch.isfinite(t) for t in terms.values())
    sum(terms.values()).backward()
    assert student["logits"].grad is not None and student["logits"].grad.abs().sum() > 0
