"""Third-party methods: through the kdbench.methods entry-point group, and through a grid's plugins list."""

from __future__ import annotations

import os
import subprocess
import sys

from kdbench.config import parse_grid
from kdbench.loss import METHODS

PLUGIN = '''
import torch.nn.functional as F
from kdbench.loss import DistillLoss, Needs, register_method

@register_method("{name}")
class PluginMethod(DistillLoss):
    """A third-party method for tests."""
    paper = "Plugin et al., 2026"
    needs = Needs(teacher_taps=())
    defaults = {{"ce_weight": 1.0}}
    def forward(self, student, teacher, batch, progress):
        return {{"ce": self.hparams["ce_weight"] * F.cross_entropy(student["logits"], batch["target"])}}
'''


def test_entry_point_group_registers_methods(tmp_path):
    (tmp_path / "ep_plugin.py").write_text(PLUGIN.format(name="ep_method"))
    dist_info = tmp_path / "ep_plugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-plugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[kdbench.methods]\nep_method = ep_plugin\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "kdbench", "methods"], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "ep_method: Plugin et al., 2026" in result.stdout


def test_grid_plugins_are_imported_before_validation(tmp_path):
    (tmp_path / "my_method.py").write_text(PLUGIN.format(name="file_plugin_method"))
    raw = {
        "name": "p", "plugins": ["my_method.py"], "datasets": [{"name": "synthetic"}],
        "pairs": [{"teacher": "cnn_large", "student": "cnn_small"}],
        "methods": [{"name": "file_plugin_method", "params": {"ce_weight": 0.5}}],
    }
    grid = parse_grid(raw, base_dir=tmp_path)
    assert grid.methods[0].name == "file_plugin_method" and "file_plugin_method" in METHODS
