"""The README figures: helper.figures draws three non-trivial PNGs, the same bytes every run."""
import matplotlib.image as mpimg
import pytest

from helper.dev import figures

EXPECTED = ("encoder.png", "unrolled.png", "attention.png")


def test_main_writes_three_nontrivial_pngs(tmp_path):
    paths = figures.main(["--out", str(tmp_path / "assets")])

    assert sorted(p.name for p in paths) == sorted(EXPECTED)
    for name in EXPECTED:
        image = mpimg.imread(tmp_path / "assets" / name)
        height, width = image.shape[:2]
        assert 1400 <= width <= 2000, f"{name}: width {width}px"
        assert height >= 600, f"{name}: height {height}px"
        assert image[..., :3].std() > 0.05, f"{name} looks blank"
    assert not list((tmp_path / "assets").glob("*.tmp*")), "temporary files left behind"


def test_figures_are_deterministic(tmp_path):
    first = figures.draw_attention(tmp_path / "a.png").read_bytes()
    second = figures.draw_attention(tmp_path / "b.png").read_bytes()
    assert first == second


def test_out_that_is_a_file_raises(tmp_path):
    not_a_dir = tmp_path / "file.txt"
    not_a_dir.write_text("x")
    with pytest.raises(NotADirectoryError, match="directory"):
        figures.make_figures(not_a_dir)
