"""The command line end to end on generated data, and its handling of user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig, scratch_network_config
from napari_unet.core.modelfile import load_model_file
from napari_unet.core.synthetic import synthetic_nuclei
from napari_unet.core.train import GENTLE_FINE_TUNE_LEARNING_RATE

TINY = ["--depth", "2", "--base-width", "4", "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture
def sample_folder(tmp_path):
    assert main(["sample", "--out", str(tmp_path / "data"), "--count", "3", "--size", "64"]) == 0
    return tmp_path / "data"


@pytest.fixture
def tiny_model_file(tmp_path):
    return Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "tiny.safetensors")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    assert not any("Traceback" in line for line in err)
    return err[-1]


def test_train_predict_evaluate(sample_folder, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    code = main(["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--out", str(model), "--epochs", "2", "--steps-per-epoch", "2", "--val-fraction", "0.34", *TINY])
    assert code == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["steps"] == 4 and summary["stop_reason"] == "epochs"
    assert model.is_file()
    # People read one line of what training did.
    best = max(record["score"] for record in load_model_file(model).history if record.get("score") is not None)
    assert captured.err.strip().splitlines()[-1] == (
        f"napari-unet: 4 steps in {summary['last_validation']['seconds']:.0f} s (epochs), best validation AP50 "
        f"{best:.3f}; model written to {model}")
    assert summary["threshold"] == load_model_file(model).threshold  # the one prediction will use
    assert load_model_file(model).training["learning_rate"] == 1e-3  # from scratch

    # Fine-tune the written model further: --init takes a path.
    again = tmp_path / "again.safetensors"
    assert main(["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--out", str(again), "--init", str(model), "--epochs", "1", "--steps-per-epoch", "2", *TINY]) == 0
    capsys.readouterr()
    assert load_model_file(again).training["freeze_norm"] is None  # kept, as fine-tuning does
    # Three images leave none whole to validate on: the gentle fine-tuning step.
    assert load_model_file(again).training["learning_rate"] == GENTLE_FINE_TUNE_LEARNING_RATE
    continued = tmp_path / "continued.safetensors"
    assert main(["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--out", str(continued), "--init", str(model), "--train-norm", "--epochs", "1",
                 "--steps-per-epoch", "1", *TINY]) == 0
    capsys.readouterr()
    assert load_model_file(continued).training["freeze_norm"] is False

    out = tmp_path / "pred"
    assert main(["predict", "--model", str(again), str(sample_folder / "images"), "--out", str(out),
                 "--tile-size", "64", "--probability", "--device", "cpu"]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"nuclei_{i:03d}.tif" for i in range(3)] + [f"nuclei_{i:03d}_probability.tif" for i in range(3)])
    labels = tifffile.imread(out / "nuclei_000.tif")
    assert labels.shape == (64, 64) and labels.dtype == np.uint16
    probability = tifffile.imread(out / "nuclei_000_probability.tif")
    assert probability.dtype == np.float32 and 0 <= probability.min() <= probability.max() <= 1
    capsys.readouterr()

    report = tmp_path / "metrics.json"
    assert main(["evaluate", "--pred", str(out / "nuclei_00?.tif"), "--gt", str(sample_folder / "labels"),
                 "--json", str(report)]) == 0
    printed = capsys.readouterr().out.splitlines()
    written = json.loads(report.read_text())
    assert written["images"] == 3 and len(written["ap_pooled"]) == 10
    # The terminal gets the headline figures of the file, a short table.
    assert printed[0] == "3 plane(s) of 3 image(s)" and len(printed) == 9
    assert printed[1].split()[-1] == f"{written['ap_pooled'][0]:.3f}"
    # A report is not replaced without being asked.
    assert main(["evaluate", "--pred", str(out / "nuclei_00?.tif"), "--gt", str(sample_folder / "labels"),
                 "--json", str(report)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    report.write_text("{}")
    assert main(["evaluate", "--pred", str(out / "nuclei_00?.tif"), "--gt", str(sample_folder / "labels"),
                 "--json", str(report), "--overwrite"]) == 0
    assert json.loads(report.read_text()) == written


def test_evaluate_a_perfect_prediction_scores_one(sample_folder, capsys):
    labels = str(sample_folder / "labels")
    report = sample_folder.parent / "perfect.json"
    assert main(["evaluate", "--pred", labels, "--gt", labels, "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["pixel_iou"] == 1.0
    assert result["ap_pooled"] == [1.0] * 10
    assert result["mean_ap_0.5_0.95"] == 1.0
    assert result["pixel_error"] == 0.0 and result["v_rand"] == 1.0
    table = dict(line.rsplit("  ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert {name.strip(): value for name, value in table.items()} == {
        "AP at IoU 0.5 (pooled)": "1.000", "AP at IoU 0.75 (pooled)": "1.000", "mean AP, IoU 0.5-0.95": "1.000",
        "objects: true / predicted": f"{result['tp'][0]} / {result['tp'][0]}", "pixel IoU": "1.000",
        "pixel F1": "1.000", "pixel error (ISBI)": "0.0000", "V_rand (ISBI)": "1.000"}


def test_predict_stack_keeps_shape_and_pixel_size(tmp_path, tiny_model_file):
    image, _ = synthetic_nuclei((48, 40), count=4, seed=0)
    stack = np.stack([image, image[::-1]])
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, stack, imagej=True, resolution=(1 / 0.25, 1 / 0.25), metadata={"unit": "um", "axes": "ZYX"})
    assert main(["predict", "--model", str(tiny_model_file), str(source), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    with tifffile.TiffFile(tmp_path / "out" / "stack.tif") as tif:
        assert tif.series[0].shape == (2, 48, 40)
        x_resolution = tif.pages.first.tags["XResolution"].value
        assert x_resolution[0] / x_resolution[1] == pytest.approx(4.0)


def test_predict_reports_a_corrupt_input_and_goes_on(tmp_path, tiny_model_file, capsys):
    good, _ = synthetic_nuclei((32, 32), count=2, seed=0)
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a_good.tif", good)
    (folder / "b_broken.tif").write_bytes(b"II*\x00garbage")
    code = main(["predict", "--model", str(tiny_model_file), str(folder), "--out", str(tmp_path / "out"), "--device", "cpu"])
    assert code == 1
    assert (tmp_path / "out" / "a_good.tif").is_file()
    assert not (tmp_path / "out" / "b_broken.tif").exists()
    assert "1 of 2 input(s) failed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "--model", "no-such-model", "x.tif", "--out", "o"], "no model file"),
        (["train", "--images", "missing/", "--labels", "missing/", "--out", "m"], "no such file or folder"),
        (["predict", "--model", "models.safetensors", "x.tif", "--out", "o"],
         "models.safetensors is a folder, not a model file"),
        (["predict", "--model", "nuclei", "x.tif", "--out", "notes.txt/labels"],
         "cannot write into notes.txt/labels: notes.txt is a file, not a folder"),
        (["train", "--images", "x.tif", "--labels", "y.tif", "--out", "notes.txt/m.safetensors"],
         "cannot write into notes.txt: it is a file, not a folder"),  # before any training
        (["export", "nuclei", "model.safetensors"], "a bioimage.io package is a zip file"),
        (["export", "nuclei", "notes.txt"], "name ending in .zip, not notes.txt"),  # never over another file
    ],
)
def test_user_mistakes_give_one_line_and_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    image, labels = synthetic_nuclei((32, 32), count=2, seed=0)
    tifffile.imwrite("x.tif", image)
    tifffile.imwrite("y.tif", labels.astype(np.uint16))
    Path("notes.txt").write_text("a file, not a folder")
    Path("models.safetensors").mkdir()  # a folder chosen as the model
    assert main(argv) == 2
    assert message in _error_line(capsys)


def test_export_writes_a_bioimageio_package_that_predict_takes_as_the_model(tmp_path, tiny_model_file,
                                                                           sample_folder, capsys):
    pytest.importorskip("bioimageio.spec")
    package = tmp_path / "tiny.zip"
    assert main(["export", str(tiny_model_file), str(package)]) == 0
    assert f"written to {package} as a bioimage.io model package" in capsys.readouterr().out
    # An existing package is replaced only when asked.
    written = package.read_bytes()
    assert main(["export", str(tiny_model_file), str(package)]) == 2
    assert f"{package} exists" in (line := _error_line(capsys)) and "--overwrite" in line
    assert package.read_bytes() == written
    assert main(["export", str(tiny_model_file), str(package), "--overwrite"]) == 0
    # napari-unet reads the package back as the model it was exported from.
    images = str(sample_folder / "images")
    assert main(["predict", "--model", str(tiny_model_file), images, "--out", str(tmp_path / "from_file")]) == 0
    assert main(["predict", "--model", str(package), images, "--out", str(tmp_path / "from_package")]) == 0
    for path in sorted((tmp_path / "from_file").glob("*.tif")):
        assert np.array_equal(tifffile.imread(path), tifffile.imread(tmp_path / "from_package" / path.name))


def test_a_file_that_is_not_a_model(tmp_path, capsys, sample_folder):
    fake = tmp_path / "model.safetensors"
    fake.write_bytes(b"not a model at all")
    assert main(["predict", "--model", str(fake), str(sample_folder / "images"), "--out", str(tmp_path / "o")]) == 2
    line = _error_line(capsys)
    assert str(fake) in line and "not a readable model file" in line


def test_mismatched_image_and_labels(tmp_path, capsys):
    image, labels = synthetic_nuclei((64, 64), count=4, seed=0)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", labels[:32].astype(np.uint16))
    assert main(["train", "--images", str(tmp_path / "image.tif"), "--labels", str(tmp_path / "labels.tif"),
                 "--out", str(tmp_path / "m"), *TINY]) == 2
    assert "do not match" in _error_line(capsys)
    assert not (tmp_path / "m.safetensors").exists()


def test_never_overwrites_an_input(tmp_path, tiny_model_file, capsys):
    image, _ = synthetic_nuclei((32, 32), count=2, seed=0)
    tifffile.imwrite(tmp_path / "image.tif", image)
    before = (tmp_path / "image.tif").read_bytes()
    assert main(["predict", "--model", str(tiny_model_file), str(tmp_path / "image.tif"), "--out", str(tmp_path)]) == 2
    assert "overwrite an input" in _error_line(capsys)
    assert (tmp_path / "image.tif").read_bytes() == before


def test_models_lists_description_training_data_scale_and_figures(tmp_path, monkeypatch, capsys):
    from napari_unet.core import registry

    model = Model.new(NetworkConfig(depth=2, base_width=4))
    model.description, model.training_data = "Test nuclei", "generated sample data"
    model.pixel_size, model.pixel_unit, model.object_diameter = (0.5, 0.5), "um", 17.25
    model.evaluation, model.threshold = {"ap50_pooled": 0.91, "tta_ap50_pooled": 0.93}, 0.65
    model.save(tmp_path / "test-nuclei.safetensors")
    monkeypatch.setattr(registry, "_EMBEDDED", tmp_path)

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for expected in ("test-nuclei: Test nuclei", "generated sample data", "pixel size 0.5 x 0.5 um",
                     "object diameter 17.2 px", "depth 2, base width 4", "threshold:       0.65",
                     "validation:      ap50_pooled 0.91\n", "with --tta:      ap50_pooled 0.93\n"):
        assert expected in text
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["test-nuclei"]["evaluation"] == {"ap50_pooled": 0.91, "tta_ap50_pooled": 0.93}
    # Listed models are the ones --model and --init take by name.
    assert registry.load_model("test-nuclei").object_diameter == 17.25


def test_the_shipped_models_are_listed(capsys):
    from napari_unet.core.registry import embedded_models

    assert main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(f"{name}: " in text for name in embedded_models())


def test_train_with_explicit_validation_images(sample_folder, tmp_path, capsys):
    model = tmp_path / "model.safetensors"
    arguments = ["train", "--images", str(sample_folder / "images" / "nuclei_00[01].tif"),
                 "--labels", str(sample_folder / "labels"), "--out", str(model), "--epochs", "1",
                 "--steps-per-epoch", "2", *TINY]
    assert main([*arguments, "--val-images", str(sample_folder / "images" / "nuclei_002.tif")]) == 2
    assert "--val-images and --val-labels go together" in _error_line(capsys)
    assert not model.exists()
    assert main([*arguments, "--val-images", str(sample_folder / "images" / "nuclei_002.tif"),
                 "--val-labels", str(sample_folder / "labels" / "nuclei_002.tif"), "--schedule", "cosine"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert "iou" in summary["last_validation"]


def test_a_new_network_has_the_size_the_core_gives_the_device(sample_folder, tmp_path, capsys):
    from napari_unet.cli import build_parser

    model = tmp_path / "model.safetensors"
    flags = TINY[TINY.index("--patch-size"):]  # TINY without its depth and width
    assert main(["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--out", str(model), "--epochs", "1", "--steps-per-epoch", "1", "--val-fraction", "0", *flags]) == 0
    cpu = scratch_network_config(torch.device("cpu"))
    assert load_model_file(model).network.config == cpu  # as the Train widget on a CPU
    assert f"from scratch (depth {cpu.depth}, base width {cpu.base_width})" in capsys.readouterr().err
    # The help says the core's sizes; it states them without importing torch.
    train = next(a for a in build_parser()._actions if a.dest == "command").choices["train"]
    helps = {action.dest: action.help for action in train._actions}
    assert f"default: {NetworkConfig.depth}, or {cpu.depth} when training on a CPU" in helps["depth"]
    assert f"default: {NetworkConfig.base_width}, or {cpu.base_width} when training on a CPU" in helps["base_width"]


def test_help_explains_every_flag():
    from napari_unet.cli import build_parser

    subcommands = next(a for a in build_parser()._actions if a.dest == "command").choices
    assert set(subcommands) == {"train", "predict", "evaluate", "models", "sample", "export"}
    for name, parser in subcommands.items():
        for action in parser._actions:
            assert action.help and len(action.help) > 10, f"{name} {action.option_strings or action.dest} has no help"
    text = subprocess.run([sys.executable, "-m", "napari_unet", "predict", "--help"], capture_output=True, text=True,
                          check=True).stdout
    assert "usage: napari-unet predict" in text and "--tile-size" in text


def test_output_read_by_a_reader_that_stops_early_ends_quietly():
    # As in `napari-unet models --json | head -1`: the reader has gone before the output is written.
    child = subprocess.Popen([sys.executable, "-m", "napari_unet", "models", "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()
    error = child.stderr.read().decode()
    assert child.wait(timeout=120) == 0
    assert "Traceback" not in error and "BrokenPipe" not in error


def test_train_float32_flag_turns_mixed_precision_off(sample_folder, tmp_path, monkeypatch, cpu_with_amx):
    from napari_unet.core import train as core_train

    configs = []
    real = core_train.train_iter

    def noting(samples, *args, config=None, **kwargs):
        configs.append(config)
        return real(samples, *args, config=config, **kwargs)

    monkeypatch.setattr(core_train, "train_iter", noting)
    arguments = ["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--epochs", "1", "--steps-per-epoch", "1", *TINY]
    assert main([*arguments, "--out", str(tmp_path / "mixed.safetensors")]) == 0
    assert main([*arguments, "--out", str(tmp_path / "exact.safetensors"), "--float32"]) == 0
    assert [config.amp for config in configs] == [True, False]


def test_train_intensity_range_reaches_the_training_and_validation_images(sample_folder, tmp_path, monkeypatch,
                                                                          capsys):
    from napari_unet.core import train as core_train

    samples = []
    real = core_train.train_iter

    def noting(training, *args, validation_samples=None, **kwargs):
        samples.extend([*training, *validation_samples])
        return real(training, *args, validation_samples=validation_samples, **kwargs)

    monkeypatch.setattr(core_train, "train_iter", noting)
    arguments = ["train", "--images", str(sample_folder / "images" / "nuclei_00[01].tif"),
                 "--labels", str(sample_folder / "labels"), "--val-images", str(sample_folder / "images" / "nuclei_002.tif"),
                 "--val-labels", str(sample_folder / "labels"), "--epochs", "1", "--steps-per-epoch", "1", *TINY]
    assert main([*arguments, "--out", str(tmp_path / "ranged.safetensors"), "--intensity-range", "0", "2000"]) == 0
    assert len(samples) == 3 and {sample.intensity_range for sample in samples} == {(0.0, 2000.0)}
    samples.clear()
    assert main([*arguments, "--out", str(tmp_path / "bad.safetensors"), "--intensity-range", "9", "1"]) == 2
    assert _error_line(capsys) == "napari-unet: error: an intensity range is two numbers, the lower first (got 9 and 1)"
    assert not samples and not (tmp_path / "bad.safetensors").exists()


def test_train_from_the_closest_embedded_model_says_which_it_is(sample_folder, tmp_path, capsys):
    out = tmp_path / "closest.safetensors"
    assert main(["train", "--images", str(sample_folder / "images"), "--labels", str(sample_folder / "labels"),
                 "--out", str(out), "--init", "closest", "--epochs", "1", "--steps-per-epoch", "1",
                 "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "nuclei is the embedded model closest to these images" in err
    assert "starting from nuclei" in err
    trained = load_model_file(out)  # nuclei given back as it was, or fine-tuned from it
    assert trained.name == "nuclei" or trained.training_data.startswith("fine-tuned from nuclei")
