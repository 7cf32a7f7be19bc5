"""`timm-sage bench` on tiny settings: the table and JSON come out in the documented format."""

from __future__ import annotations

import json
import re

import pytest

from timm_sage.tools import bench, cli
from timm_sage.tools.report import read_between_markers


def test_bench_quick_writes_table_json_and_plot(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "mix", "step", "scale", "--quick", "--repeats", "1", "--warmup", "0"]
    report = tmp_path / "benchmarks.md"
    report.write_text("# Benchmarks\n\nhand-written intro\n")
    code = cli.main([*argv, "--json", str(out), "--plot-dir", str(tmp_path), "--report", str(report)])
    assert code == 0
    printed = capsys.readouterr().out
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0] == "| suite | case | what | median | unit | ratio | to |"
    assert len(table) > 20
    for line in table[1:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert len(cells) == 7 and re.fullmatch(r"\d+\.\d\d", cells[3])
    payload = json.loads(out.read_text())
    names = {(r["suite"], r["name"]) for r in payload["rows"]}
    assert ("step", "sage update_ratio=0.7") in names
    assert ("step", "sage cheap saliency_scale=0.5 update_ratio=1") in names
    assert ("step", "sage saliency_size=16 update_ratio=1") in names
    assert ("step", "sage clean_term=in_batch update_ratio=0.7") in names
    # The fixed-cost rows: every SAGE variant's step without the model's forward and backward, with the
    # tensor operations it dispatches; the clean term (r < 1) adds a handful of kernels, not one per
    # parameter.
    fixed = {r["name"]: r for r in payload["rows"] if r["name"].startswith("fixed: ")}
    for source in ("cam", "features"):  # forward-only saliency: its rows, and no replayed fixed-cost row
        assert ("step", f"sage saliency_source={source} saliency_scale=0.5 update_ratio=1") in names
    assert ("step", "sage saliency_source=cam saliency_model=ema update_ratio=1") in names
    assert set(fixed) == {f"fixed: {n}" for _, n in names if n.startswith("sage ") and "_source=" not in n}
    for row in fixed.values():
        assert 0 < row["extra"]["kernel_ops"] <= row["extra"]["ops"] and row["ratio"] > 0
    ops = {name: row["extra"]["kernel_ops"] for name, row in fixed.items()}
    assert 0 < ops["fixed: sage update_ratio=0.7"] - ops["fixed: sage update_ratio=1"] <= 16
    assert ("mix", "saliency pass saliency_scale=0.5 update_ratio=0.7") in names
    assert any(n.startswith("sage_mix search_size=8") for _, n in names)
    assert ("mix", "torchvision v2 CutMix") in names and ("mix", "timm mixup elem") in names
    # Ratios are measured against the row named in "baseline" of the same case.
    rows = payload["rows"]
    for row in rows:
        if row["ratio"] is not None:
            base = next(r for r in rows if r["case"] == row["case"] and r["name"] == row["baseline"])
            assert row["ratio"] == pytest.approx(row["value"] / base["value"])
    section = read_between_markers(report, "bench-mix-step-scale")
    assert section is not None and "hand-written intro" in report.read_text()
    assert section.startswith("Command: `timm-sage bench mix step scale --device cpu --repeats 1")
    assert [line for line in section.splitlines() if line.startswith("| ")] == table
    assert (tmp_path / "scale.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_unknown_suite_and_device(capsys):
    assert cli.main(["bench", "nonsense"]) == 2
    assert "suites must be among" in capsys.readouterr().err
    assert cli.main(["bench", "mix", "--device", "tpu"]) == 2
    assert cli.main(["bench", "mix", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


def test_bench_threads_and_section_name_the_report_section(tmp_path):
    import torch

    report = tmp_path / "benchmarks.md"
    before = torch.get_num_threads()
    try:
        argv = ["bench", "step", "--quick", "--repeats", "1", "--warmup", "0", "--report", str(report)]
        assert cli.main([*argv, "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
        section = read_between_markers(report, "bench-step-1-threads")
        assert section is not None and "--threads 1" in section and "1 torch threads" in section
        assert cli.main([*argv, "--section", "mine"]) == 0
        assert read_between_markers(report, "mine").startswith("Command: `timm-sage bench step --device cpu")
    finally:
        torch.set_num_threads(before)


def test_bench_memory_quick_measures_step_growth(tmp_path):
    out = tmp_path / "memory.json"
    assert cli.main(["bench", "memory", "--quick", "--json", str(out)]) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"vanilla", "sage r=1", "sage r=0.7"}
    for row in rows.values():
        assert row["unit"] == "MiB" and row["value"] > 0
        assert row["extra"]["process_peak_mib"] >= row["extra"]["before_steps_mib"]


def test_interleaved_medians_take_the_calls_in_turn(monkeypatch):
    import torch

    from timm_sage.tools import timing

    order: list[str] = []
    clock = iter(float(t) for t in range(1000))
    monkeypatch.setattr(timing.time, "perf_counter", lambda: next(clock))
    calls = {name: (lambda name=name: order.append(name)) for name in ("a", "b", "c")}
    times = timing.interleaved_times_ms(calls, torch.device("cpu"), repeats=3, warmup=1)
    assert order == ["a", "b", "c"] * 4  # one warm-up round, then three timed rounds, in turn
    # each timed call reads the clock twice in a row: 1 s apart, 1000 ms
    assert times == {"a": [1000.0] * 3, "b": [1000.0] * 3, "c": [1000.0] * 3}


def test_each_suite_reaches_the_json_as_it_finishes_and_a_failure_does_not_stop_the_run(
    tmp_path, monkeypatch, capsys
):
    """What .ci/gpu_check.sh relies on: a crash in one suite loses nothing measured before it."""
    from timm_sage.tools import bench

    out = tmp_path / "bench.json"
    seen_by_step: list[dict] = []

    def failing_step(device, repeats, warmup, quick):
        seen_by_step.append(json.loads(out.read_text()))  # the mix suite's rows are on disk already
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(bench, "suite_step", failing_step)
    argv = ["bench", "mix", "step", "scale", "--quick", "--search-only", "--repeats", "1", "--warmup", "0"]
    assert cli.main([*argv, "--json", str(out)]) == 1
    (before_step,) = seen_by_step
    assert before_step["meta"]["finished"] == ["mix"] and before_step["rows"]
    payload = json.loads(out.read_text())
    assert payload["meta"]["finished"] == ["mix", "scale"]  # the suite after the failure still ran
    assert "illegal memory access" in payload["meta"]["failed"]["step"]
    assert {r["suite"] for r in payload["rows"]} == {"mix", "scale"}
    assert "bench step failed: RuntimeError" in capsys.readouterr().err
    names = [r["name"] for r in payload["rows"] if r["suite"] == "mix"]
    assert {"search exact kernel=windows K=39", "search exact kernel=overlap K=39"} <= set(names)
    windows = next(r for r in payload["rows"] if r["name"] == "search exact kernel=windows K=39")
    assert windows["extra"]["traffic_model_gb"] == pytest.approx(4 * 39 * 32 * 32 * 28 / 1e9)


def test_bench_compile_quick_times_compiled_and_eager_steps_against_compiled_vanilla(tmp_path):
    import torch._dynamo

    from timm_sage.tools import bench

    torch._dynamo.reset()
    out = tmp_path / "compile.json"
    argv = [
        "bench",
        "compile",
        "--quick",
        "--repeats",
        "1",
        "--warmup",
        "0",
        "--compile-backend",
        "aot_eager",
    ]
    assert cli.main([*argv, "--json", str(out)]) == 0
    rows = {row["name"]: row for row in json.loads(out.read_text())["rows"]}
    assert set(rows) == set(bench.COMPILE_STEP_VARIANTS)
    assert rows["vanilla compiled"]["ratio"] == 1.0 and all(row["value"] > 0 for row in rows.values())
    assert all(row["baseline"] == "vanilla compiled" and "aot_eager" in row["case"] for row in rows.values())
    torch._dynamo.reset()


@pytest.mark.parametrize(
    ("model", "flags"),
    [
        ("test_resnet", ["--channels-last"]),
        ("test_vit", ["--amp"]),
        ("test_resnet", ["--compile", "aot_eager"]),
    ],
)
def test_bench_step_model_at_the_users_scale(tmp_path, capsys, model, flags):
    """`bench step --model NAME`: the vanilla step, SAGE with the exact and the default search, the cheapest
    levers and the search alone, in one process, ratios to vanilla; the search's share is printed. A ViT
    (fixed input size) is built with dynamic_img_size, so the levers run it smaller."""
    out = tmp_path / "bench.json"
    argv = ["bench", "step", "--model", model, "--img-size", "64", "--batch-size", "2", "--num-classes", "5",
            "--repeats", "1", "--warmup", "0", "--json", str(out), *flags]  # fmt: skip
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == [
        "vanilla",
        "sage exact search update_ratio=1",
        "sage default search update_ratio=1",
        "sage default search saliency_scale=0.5 update_ratio=1",
        "sage default search saliency_size=16 update_ratio=1",
        "search alone exact (sage_mix)",
        "search alone default (sage_mix)",
    ]
    for row in rows:
        assert row["value"] > 0 and row["ratio"] == pytest.approx(row["value"] / rows[0]["value"])
    # 64 px: the exact search scores floor(127^2 * 0.01) = 161 candidates on the 64 x 64 maps, the default
    # ("auto": 64^4 > 48^2 * 64^2, so pooled by 2) floor(63^2 * 0.01) = 39 on 32 x 32.
    by_name = {r["name"]: r["extra"] for r in rows}
    assert (by_name["search alone exact (sage_mix)"]["search_grid"], by_name["search alone exact (sage_mix)"]
            ["candidates"]) == (64, 161)  # fmt: skip
    assert by_name["sage default search update_ratio=1"]["search_grid"] == 32
    assert by_name["search alone default (sage_mix)"]["candidates"] == 39
    shares = [line for line in printed.splitlines() if line.startswith("search share")]
    assert len(shares) == 2 and "64 x 64 grid, K=161" in shares[0] and "32 x 32 grid, K=39" in shares[1]
    assert re.search(r"= \d+\.\d %", shares[0])


def test_bench_model_flags_need_the_step_suite(capsys):
    assert cli.main(["bench", "mix", "--model", "resnet18"]) == 2
    assert "--model runs the step suite alone" in capsys.readouterr().err
    assert cli.main(["bench", "step", "--model", "resnet18", "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


def test_bench_step_saliency_source_keeps_only_that_sources_sage_rows(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "step", "--quick", "--repeats", "1", "--warmup", "0", "--saliency-source", "cam"]
    assert cli.main([*argv, "--json", str(out)]) == 0
    names = [r["name"] for r in json.loads(out.read_text())["rows"]]
    sage = [n for n in names if "sage" in n]
    assert sage and all("saliency_source=cam" in n for n in sage)  # no gradient rows, no fixed rows
    assert {"vanilla", "timm mixup", "sage saliency_source=cam saliency_scale=0.5 update_ratio=1"} <= {*names}
    args = cli.build_parser("bench").parse_args(argv)
    assert "--saliency-source cam" in bench.report_command(args)


def test_bench_step_model_with_forward_only_sources_adds_their_rows(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "step", "--model", "test_resnet", "--img-size", "128", "--batch-size", "2",
            "--num-classes", "5", "--repeats", "1", "--warmup", "0", "--saliency-source", "cam",
            "--json", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    for name in ("sage default search saliency_source=cam update_ratio=1",
                 "sage default search saliency_source=cam saliency_scale=0.5 update_ratio=1"):  # fmt: skip
        assert rows[name]["value"] > 0 and rows[name]["ratio"] == pytest.approx(
            rows[name]["value"] / rows["vanilla"]["value"]
        )
    assert "sage exact search update_ratio=1" in rows and not any("features" in n for n in rows)
