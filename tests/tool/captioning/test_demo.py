"""The main job (`make demo`): three trainings, one report."""
from helper.captioning.demo import main

from _cli_data import TINY, write_tiny_data
import pytest

# The slow tier (make test-all): the demo trains every decoder.
pytestmark = pytest.mark.slow


def test_demo_trains_each_cell_type_and_writes_a_report(impl, tmp_path):
    data = write_tiny_data(tmp_path / "tiny.pt")
    out = tmp_path / "demo"
    code = main(["--out", str(out), "--data", str(data), "--cells", "rnn", "attn", "--", "--epochs", "1", *TINY])
    assert code == 0
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")]
    assert [row.split("|")[1].strip() for row in table[1:]] == ["vanilla RNN", "attention LSTM"]
    assert (out / "loss.png").stat().st_size > 0
    for cell in ("rnn", "attn"):
        assert f"]({cell}/samples.png)" in report
        assert (out / cell / "samples.png").is_file()
        assert (out / cell / "best.pt").is_file()


def test_demo_rejects_an_unknown_cell_type(tmp_path, capsys):
    try:
        main(["--out", str(tmp_path), "--cells", "gru"])
    except SystemExit as exit:
        assert exit.code == 2
    assert "invalid choice" in capsys.readouterr().err
