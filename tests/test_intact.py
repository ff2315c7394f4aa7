"""An image counts as done only when it is whole: cut short anywhere, emptied or replaced, it is not."""

from __future__ import annotations

import pytest
from PIL import Image

from zlab.runs.ledger import intact_image


@pytest.mark.parametrize(("fmt", "suffix"), [("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("GIF", ".gif")])
def test_a_whole_image_is_intact_and_any_cut_is_not(tmp_path, fmt, suffix):
    path = tmp_path / f"image{suffix}"
    Image.effect_noise((160, 96), 64).convert("RGB").save(path, fmt)
    data = path.read_bytes()
    assert intact_image(path)
    for keep in (0, 8, len(data) // 3, len(data) // 2, len(data) - 40):
        path.write_bytes(data[:keep])
        assert not intact_image(path), f"{fmt} cut to {keep} of {len(data)} bytes counted as whole"


def test_a_missing_file_or_another_kind_of_file_is_not_an_image(tmp_path):
    assert not intact_image(tmp_path / "nowhere.png")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    assert not intact_image(text)
