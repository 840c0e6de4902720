"""
The benchmark's measurements (helper.bench) run and give sane figures on a
tiny data set; the figures themselves are printed, never asserted.
"""
import math

import torch

from _cli_data import tiny_data
from helper.dev import bench, machine
import pytest

# The slow tier (make test-all): the benchmark trains the whole model.
pytestmark = pytest.mark.slow


def test_training_throughput_is_measured_for_both_loops():
    plain, ours, rounds = bench.training_images_per_second(tiny_data(num_train=8), "lstm", steps=1, batch_size=4, repeats=2)
    assert plain > 0 and ours > 0
    assert len(rounds) == 2 and all(speedup > 0 for speedup in rounds)


def test_short_run_reports_time_validation_loss_and_metrics():
    result = bench.short_run_metrics(tiny_data(num_train=8), "attn", fast=True, epochs=1, batch_size=4)
    assert set(result) == {"seconds", "val_loss", "bleu4", "cider"}
    assert result["seconds"] > 0 and math.isfinite(result["val_loss"]) and result["val_loss"] > 0


def test_short_runs_start_alike_for_a_seed_and_differently_for_another():
    data = tiny_data(num_train=8)
    runs = [bench.short_run_metrics(data, "rnn", fast=False, epochs=1, batch_size=4, seed=seed) for seed in (0, 0, 1)]
    assert runs[0]["val_loss"] == runs[1]["val_loss"]
    assert runs[0]["val_loss"] != runs[2]["val_loss"]


def test_machine_line_names_the_vector_instructions_and_whether_there_are_bfloat16_kernels(monkeypatch):
    assert machine.cpu_instructions() in machine.machine_description()
    monkeypatch.setattr(machine, "autocast_dtype", lambda device: None)
    assert "no bfloat16 kernels" in machine.machine_description()
    monkeypatch.setattr(machine, "autocast_dtype", lambda device: torch.bfloat16)
    assert "; bfloat16 kernels" in machine.machine_description()


def test_instruction_names_follow_the_cpu_checks(monkeypatch):
    for name in ("_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: True, raising=False)
    assert machine.cpu_instructions() == "AVX-512 with bfloat16 and AMX"
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: False)
    assert machine.cpu_instructions() == "AVX2"


def test_machine_line_says_when_the_kernels_are_limited_to_another_instruction_set(monkeypatch):
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    assert "limited" not in machine.machine_description()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "kernels limited to oneDNN AVX2" in machine.machine_description()


def test_recurrent_benchmark_compares_the_lstm_with_a_forward_of_step_calls_and_with_torch():
    rows = bench.bench_recurrent(N=2, T=3, D=4, H=5, repeats=1)
    names = [row["name"] for row in rows]
    assert "LSTM forward+backward (vs a forward of step_forward calls)" in names
    assert "LSTM forward+backward (vs nn.LSTM without oneDNN)" in names
    assert all(row["ours_ms"] > 0 and row["torch_ms"] > 0 for row in rows)
