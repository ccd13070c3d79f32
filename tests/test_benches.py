"""The training benches run (bench/README.md): each script's main path, one or two steps of the
tiny model on the CPU, so that a bench the trainer's code has left behind fails here."""
import math

import torch

from bench import (bench_decode, bench_feature_mode, bench_feed, bench_model_step,
                   bench_train_step)


def table_rows(output: str) -> list[list[str]]:
    """The cells of the body rows of the markdown tables in ``output``."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    rules = {i for i, line in enumerate(lines) if line.startswith("|---")}
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for i, line in enumerate(lines) if i not in rules and i + 1 not in rules]


def positive(value: str) -> bool:
    return math.isfinite(float(value)) and float(value) > 0


def test_bench_model_step_times_the_trainers_step(capsys):
    bench_model_step.main(["--arch", "tiny", "--batch", "2", "--frames", "2", "--words", "8",
                           "--device", "cpu", "--steps", "1", "--warmup", "1",
                           "--precision", "fp32"])
    (precision, step, clips, _, videos), = table_rows(capsys.readouterr().out)
    assert precision == "fp32" and all(positive(v) for v in (step, clips, videos))


def test_bench_train_step_full_step_gives_both_formulations_one_loss(capsys):
    bench_train_step.main(["--batches", "4", "--dim", "32", "--frames", "2", "--repeats", "1",
                           "--threads", str(torch.get_num_threads()), "--full"])
    rows = table_rows(capsys.readouterr().out)
    similarity, full = rows[:2], rows[2:]
    assert [row[1] for row in full] == ["reference", "vectorised"]
    assert all(positive(row[2]) for row in similarity + full)
    assert math.isclose(float(full[0][3]), float(full[1][3]), rel_tol=1e-4)


def test_bench_feed_steps_with_the_frame_cache_loader(capsys):
    bench_feed.main(["--arch", "tiny", "--batch", "2", "--frames", "2", "--workers", "0",
                     "--steps", "1", "--warmup", "1", "--videos", "2", "--device", "cpu"])
    rows = table_rows(capsys.readouterr().out)
    assert [row[0] for row in rows] == ["step on a resident batch",
                                        "step with the loader in the loop", "loader alone"]
    assert all(positive(seconds) and positive(clips) for _, seconds, clips in rows)


def test_bench_feature_mode_times_the_trainers_step_of_each_source(capsys):
    bench_feature_mode.main(["--arch", "tiny", "--batch", "4", "--frames", "2", "--words", "8",
                             "--full_steps", "1", "--feature_steps", "1", "--warmup", "1",
                             "--threads", str(torch.get_num_threads())])
    (arch, _, *figures), = table_rows(capsys.readouterr().out)
    assert arch == "tiny" and all(positive(value.rstrip("x")) for value in figures)


def test_bench_decode_times_every_decoder_and_checks_its_pixels(capsys):
    bench_decode.main(["--videos", "1", "--seconds", "2", "--repeats", "1"])
    rows = table_rows(capsys.readouterr().out)
    decoders = [(what, name) for what, name, *_ in rows]
    assert {("JPEG", "opencv"), ("video", "opencv"), ("video", "pyav")} <= set(decoders)
    assert all(row[-1] == "yes" and all(positive(v) for v in row[2:-1]) for row in rows)
