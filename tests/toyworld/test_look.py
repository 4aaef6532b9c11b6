"""The look sheet: the demo's prompts drawn by a model, each captioned with the checker's verdict."""

from __future__ import annotations

import numpy as np
from PIL import Image

from sksbooth.toyworld.assets import base_path
from sksbooth.toyworld.look import CELL, main
from sksbooth.toyworld.report import ROWS


def test_look_writes_every_prompt_with_a_verdict_under_each_picture(tmp_path, capsys):
    out = tmp_path / "look.png"
    assert main([str(base_path()), str(out), "--columns", "2"]) == 0
    sheet = np.asarray(Image.open(out).convert("L"))
    assert sheet.shape == (len(ROWS) * (CELL + 14), 2 * CELL)
    for row in range(len(ROWS)):
        for column in range(2):
            y, x = row * (CELL + 14) + CELL, column * CELL
            assert (sheet[y:y + 14, x:x + CELL] < 128).sum() > 20  # text was written under the picture
    assert "a photo of a toy" in capsys.readouterr().out
