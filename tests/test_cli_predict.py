"""``napari-unet predict`` on many files: table, reruns, failures, diameter and Dask flags."""

from __future__ import annotations

import io
from contextlib import contextmanager

import numpy as np
import pytest
import tifffile
import torch

from napari_unet import cli
from napari_unet.cli import main
from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig
from napari_unet.core.synthetic import synthetic_nuclei

FAST = ["--device", "cpu", "--threshold", "0.55", "--min-size", "3"]


@pytest.fixture
def model_file(tmp_path, one_torch_thread):
    model = Model.new(NetworkConfig(depth=1, base_width=4), object_diameter=12.0)
    return str(model.save(tmp_path / "tiny.safetensors"))


@pytest.fixture
def inputs(tmp_path):
    """A folder with a two-plane stack and an ImageJ hyperstack."""
    folder = tmp_path / "in"
    folder.mkdir()
    planes = np.stack([synthetic_nuclei((40, 36), count=4, seed=seed)[0] for seed in range(6)])
    tifffile.imwrite(folder / "a_stack.tif", planes[:2], photometric="minisblack")
    tifffile.imwrite(folder / "b_hyper.tif", planes.reshape(3, 2, 40, 36), imagej=True,
                     resolution=(1 / 0.5, 1 / 0.5), metadata={"axes": "TZYX", "unit": "um"})
    return folder


def _table(text: str) -> dict[str, list[str]]:
    """The final table's rows by file name."""
    lines = text.strip().splitlines()
    assert lines[0].split()[:4] == ["file", "planes", "objects", "seconds"]
    return {line.split()[0]: line.split()[1:] for line in lines[1:]}


def test_predict_folders_and_globs_prints_a_table_and_reruns_skip(tmp_path, model_file, inputs, capsys):
    out = tmp_path / "out"
    # The folder and the glob name the same files: each is segmented once.
    assert main(["predict", "--model", model_file, str(inputs), str(inputs / "*.tif"), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    rows = _table(captured.out)
    assert set(rows) == {"a_stack.tif", "b_hyper.tif"}
    assert rows["a_stack.tif"][0] == "2" and rows["b_hyper.tif"][0] == "6"
    assert int(rows["b_hyper.tif"][1]) > 0 and float(rows["b_hyper.tif"][2]) >= 0
    assert "8 plane(s)" in captured.err and "planes/s" in captured.err
    with tifffile.TiffFile(out / "b_hyper.tif") as tif:
        assert tif.series[0].axes == "TZYX" and tif.imagej_metadata["unit"] == "um"
    first = (out / "b_hyper.tif").read_bytes()

    assert main(["predict", "--model", model_file, str(inputs), "--out", str(out), *FAST]) == 0
    rows = _table(capsys.readouterr().out)
    assert all("skipped" in " ".join(row) for row in rows.values())

    assert main(["predict", "--model", model_file, str(inputs), "--out", str(out), "--overwrite", *FAST]) == 0
    rows = _table(capsys.readouterr().out)
    assert rows["b_hyper.tif"][0] == "6" and (out / "b_hyper.tif").read_bytes() == first


def test_a_recursive_pattern_above_the_output_folder_leaves_out_earlier_outputs(tmp_path, model_file, inputs,
                                                                               capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    command = ["predict", "--model", model_file, "in/**/*.tif", "--out", "in/labels", *FAST]
    assert main(command) == 0
    capsys.readouterr()
    # The same command again goes on where the first stopped: the label files it wrote are
    # not inputs (they would be segmented, and nested one folder deeper every run).
    assert main(command) == 0
    captured = capsys.readouterr()
    assert set(_table(captured.out)) == {"a_stack.tif", "b_hyper.tif"}
    assert all("skipped" in " ".join(row) for row in _table(captured.out).values())
    assert "2 file(s) in the output folder in/labels are not taken as inputs" in captured.err
    assert sorted(path.name for path in (inputs / "labels").iterdir()) == ["a_stack.tif", "b_hyper.tif"]


def test_a_corrupt_input_fails_alone_with_a_summary_and_exit_code_1(tmp_path, model_file, inputs, capsys):
    (inputs / "c_broken.tif").write_bytes(b"II*\x00not really")
    code = main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"), *FAST])
    captured = capsys.readouterr()
    assert code == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_stack.tif", "b_hyper.tif"]
    assert _table(captured.out)["c_broken.tif"][-1] == "FAILED"
    errors = captured.err.strip().splitlines()
    assert errors[-1] == "napari-unet: 1 of 3 input(s) failed"
    assert "c_broken.tif" in errors[-2] and "not a readable TIFF" in errors[-2]
    assert "Traceback" not in captured.err


def test_progress_shows_files_planes_and_throughput(tmp_path, model_file, inputs, monkeypatch, capsys):
    stream = io.StringIO()

    class Visible(cli._Progress):
        def __init__(self, label):
            super().__init__(label, stream)
            self.active = True

    monkeypatch.setattr(cli, "_Progress", Visible)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"), *FAST]) == 0
    shown = stream.getvalue()
    assert "file 2/2 plane 6/6" in shown and "planes/s b_hyper.tif" in shown and "] 8/8 " in shown


@pytest.mark.parametrize("diameter", ["24", "auto"])
def test_diameter_is_a_number_or_auto_and_each_files_is_shown(tmp_path, model_file, inputs, diameter, monkeypatch,
                                                              capsys):
    from napari_unet.core import batch

    # An untrained model's objects are noise, so its estimate could be anything: stand in
    # for it and check that "auto" reaches the estimate, once per file.
    estimated = []
    monkeypatch.setattr(batch, "estimate_diameter", lambda *args, **kwargs: estimated.append(1) or 24.0)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"),
                 "--diameter", diameter, *FAST]) == 0
    assert len(estimated) == (2 if diameter == "auto" else 0)
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["file", "planes", "objects", "diameter", "scale", "seconds", "output"]
    assert len(rows) == 2 and all(row.split()[3:5] == ["24.0", "0.50"] for row in rows)  # the model's 12 px / 24 px


def test_diameter_mistakes_are_one_line_and_exit_code_2(tmp_path, inputs, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["predict", "--model", "m", str(inputs), "--out", str(tmp_path / "out"), "--diameter", "large"])
    assert exited.value.code == 2 and "'auto'" in capsys.readouterr().err
    plain = Model.new(NetworkConfig(depth=1, base_width=4)).save(tmp_path / "plain.safetensors")
    assert main(["predict", "--model", str(plain), str(inputs), "--out", str(tmp_path / "out"), "--diameter", "auto"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("napari-unet: error:") and "cannot estimate diameters" in line
    assert not (tmp_path / "out").exists()


def test_intensity_range_reaches_every_plane_and_mistakes_are_one_line(tmp_path, model_file, inputs, capsys):
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.core.predict import predict

    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"), *FAST,
                 "--intensity-range", "0", "2000"]) == 0
    stack = tifffile.imread(inputs / "a_stack.tif")
    expected = predict(load_model_file(model_file), stack, device="cpu", threshold=0.55, min_size=3,
                       intensity_range=(0, 2000)).labels
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "a_stack.tif"), expected)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "bad"), *FAST,
                 "--intensity-range", "9", "1"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line == "napari-unet: error: an intensity range is two numbers, the lower first (got 9 and 1)"
    assert not (tmp_path / "bad").exists()


def test_scheduler_and_workers_choose_the_dask_executor(tmp_path, model_file, inputs, monkeypatch, capsys):
    from napari_unet.core import distributed
    from napari_unet.core.batch import LocalExecutor

    asked = []

    @contextmanager
    def fake_cluster(scheduler=None, workers=None):
        asked.append((scheduler, workers))
        yield LocalExecutor()

    monkeypatch.setattr(distributed, "dask_executor", fake_cluster)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "a"),
                 "--scheduler", "tcp://cluster:8786", *FAST]) == 0
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "b"), "--workers", "3", *FAST]) == 0
    assert asked == [("tcp://cluster:8786", None), (None, 3)]
    with pytest.raises(SystemExit):
        main(["predict", "--model", model_file, str(inputs), "--out", "o", "--workers", "2", "--scheduler", "tcp://x:1"])
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.slow
def test_two_local_dask_workers_write_the_same_labels_as_one_process(tmp_path, model_file, inputs):
    pytest.importorskip("distributed")
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "one"), *FAST]) == 0
    # --float32: the worker processes are out of reach of the suite's float32 patch (conftest).
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "two"), "--workers", "2",
                 "--float32", *FAST]) == 0
    for name in ("a_stack.tif", "b_hyper.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "one" / name), tifffile.imread(tmp_path / "two" / name))


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_stops_a_local_dask_run_as_it_stops_one_process(tmp_path):
    # The terminal sends Ctrl-C to every process of the job, the cluster's workers too:
    # they must not die with tracebacks of their own; the run stops after its current tiles.
    import os
    import signal
    import subprocess
    import sys
    import time

    pytest.importorskip("distributed")
    folder = tmp_path / "in"
    folder.mkdir()
    for index in range(8):
        planes = np.stack([synthetic_nuclei((384, 384), count=40, seed=10 * index + plane)[0] for plane in range(3)])
        tifffile.imwrite(folder / f"f{index}.tif", planes, photometric="minisblack")
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "napari_unet", "predict", "--model", "nuclei", str(folder),
                            "--out", str(out), "--device", "cpu", "--workers", "2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(path.suffix == ".tif" for path in out.iterdir())) and run.poll() is None:
        assert time.monotonic() < deadline, "no output file in two minutes"
        time.sleep(0.1)
    assert run.poll() is None, "the run ended before Ctrl-C could be sent"
    os.killpg(run.pid, signal.SIGINT)  # what a terminal does
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "stopping after the current tiles" in stderr and "the same command goes on" in stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    finished = sorted(_table(stdout))
    assert 1 <= len(finished) < 8
    assert sorted(path.name for path in out.iterdir()) == finished  # no partial file left behind


def test_without_threshold_the_models_own_is_used(tmp_path, inputs, one_torch_thread):
    model = Model.new(NetworkConfig(depth=1, base_width=4))
    image = tifffile.imread(inputs / "a_stack.tif")
    probability = model.predict(image, device="cpu").probability
    model.threshold = round(float(np.quantile(probability, 0.7)), 4)
    path = str(model.save(tmp_path / "own.safetensors"))
    args = ["predict", "--model", path, str(inputs / "a_stack.tif"), "--device", "cpu", "--min-size", "3"]
    assert main([*args, "--out", str(tmp_path / "own")]) == 0
    assert main([*args, "--out", str(tmp_path / "given"), "--threshold", str(model.threshold)]) == 0
    assert main([*args, "--out", str(tmp_path / "lower"), "--threshold", "0.3"]) == 0
    own = tifffile.imread(tmp_path / "own" / "a_stack.tif")
    np.testing.assert_array_equal(own, tifffile.imread(tmp_path / "given" / "a_stack.tif"))
    assert (own > 0).sum() < (tifffile.imread(tmp_path / "lower" / "a_stack.tif") > 0).sum()


def test_compile_flag_compiles_the_network_once_for_all_planes(tmp_path, model_file, inputs, monkeypatch, capsys):
    from napari_unet.core import predict as core_predict

    compiled_for = []

    def record(network, example, device, amp):
        compiled_for.append(tuple(example.shape))
        return network

    monkeypatch.setattr(core_predict, "_compiled", record)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "plain"), *FAST]) == 0
    assert compiled_for == []
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"), "--compile", *FAST]) == 0
    assert compiled_for == [(1, 1, 40, 36)]  # one tile per pass on the CPU: a whole 40x36 plane
    assert "8 plane(s)" in capsys.readouterr().err
    for name in ("a_stack.tif", "b_hyper.tif"):
        np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / name), tifffile.imread(tmp_path / "plain" / name))


def test_float32_flag_predicts_in_float32_where_mixed_precision_would_not(tmp_path, model_file, inputs,
                                                                         cpu_with_amx, inference_dtypes):
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "mixed"), *FAST]) == 0
    assert set(inference_dtypes) == {torch.bfloat16}
    inference_dtypes.clear()
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "exact"), "--float32", *FAST]) == 0
    assert set(inference_dtypes) == {torch.float32}


def test_tta_flag_writes_the_orientation_averaged_labels(tmp_path, model_file, inputs):
    from napari_unet.core.modelfile import load_model_file
    from napari_unet.core.predict import predict

    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "plain"), *FAST]) == 0
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "tta"), "--tta", *FAST]) == 0
    stack = tifffile.imread(inputs / "a_stack.tif")
    expected = predict(load_model_file(model_file), stack, device="cpu", threshold=0.55, min_size=3,
                       test_time_augmentation=True).labels
    written = tifffile.imread(tmp_path / "tta" / "a_stack.tif")
    np.testing.assert_array_equal(written, expected)
    assert not np.array_equal(written, tifffile.imread(tmp_path / "plain" / "a_stack.tif"))


def test_dask_keeps_its_cluster_log_for_verbose_runs():
    pytest.importorskip("distributed")
    import logging

    from napari_unet import cli

    cli._quiet_dask_logs()
    # distributed sets its own loggers' levels when imported; those are the ones quieted.
    assert logging.getLogger("distributed.scheduler").getEffectiveLevel() == logging.ERROR
    assert logging.getLogger("distributed.nanny").getEffectiveLevel() == logging.ERROR


def test_channel_picks_one_channel_of_a_multichannel_file(tmp_path, model_file, capsys):
    folder = tmp_path / "multi"
    folder.mkdir()
    planes = np.stack([synthetic_nuclei((40, 36), count=4, seed=seed)[0] for seed in range(4)])
    tifffile.imwrite(folder / "dapi_gfp.tif", planes.reshape(2, 2, 40, 36), imagej=True, metadata={"axes": "TCYX"})
    assert main(["predict", "--model", model_file, str(folder), "--out", str(tmp_path / "out"), "--channel", "0",
                 *FAST]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "dapi_gfp.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (2, 40, 36)
    assert _table(capsys.readouterr().out)["dapi_gfp.tif"][0] == "2"  # planes


def test_ctrl_c_stops_after_the_current_tiles_and_lists_the_finished_files(tmp_path, model_file, inputs, monkeypatch,
                                                                            capsys):
    import os
    import signal

    from napari_unet.core import progress as core_progress

    real = core_progress.run_to_end
    sent = []

    def interrupted_in_the_second_file(generator, on_progress=None):
        def show(update):
            if update.file == 1 and not sent:
                sent.append(1)
                os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C does
            on_progress(update)

        return real(generator, show)

    monkeypatch.setattr(core_progress, "run_to_end", interrupted_in_the_second_file)
    handler = signal.getsignal(signal.SIGINT)
    assert main(["predict", "--model", model_file, str(inputs), "--out", str(tmp_path / "out"), *FAST]) == 130
    captured = capsys.readouterr()
    assert list(_table(captured.out)) == ["a_stack.tif"] and "stopping after the current tiles" in captured.err
    assert "the same command goes on" in captured.err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["a_stack.tif"]
    assert signal.getsignal(signal.SIGINT) is handler  # Ctrl-C is Python's again
