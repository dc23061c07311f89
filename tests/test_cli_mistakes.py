"""The command line refuses what would damage the user's files, and says so in one line.

Each case comes from a review that tried to break the command line as a user would.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile

import napari_unet.core.train as core_train
from napari_unet.cli import main
from napari_unet.core.bundle import Model
from napari_unet.core.model import NetworkConfig
from napari_unet.core.modelfile import load_model_file
from napari_unet.core.synthetic import synthetic_nuclei

TINY = ["--depth", "2", "--base-width", "4", "--patch-size", "32", "--batch-size", "2", "--device", "cpu"]


@pytest.fixture
def pair(tmp_path):
    """One image and its labels, in images/ and labels/."""
    image, labels = synthetic_nuclei((64, 64), count=6, seed=0)
    for kind, data in (("images", image), ("labels", labels.astype(np.uint16))):
        (tmp_path / kind).mkdir()
        tifffile.imwrite(tmp_path / kind / "a.tif", data)
    return tmp_path / "images", tmp_path / "labels"


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err)
    return err[-1]


def _train(pair, *extra):
    images, labels = pair
    return main(["train", "--images", str(images), "--labels", str(labels), *extra])


def test_train_never_writes_its_model_over_an_image_or_into_a_folder(pair, tmp_path, capsys):
    image = pair[0] / "a.tif"
    before = image.read_bytes()
    assert _train(pair, "--out", str(image), "--epochs", "1", *TINY) == 2
    assert "ending in .safetensors" in _error_line(capsys)
    assert image.read_bytes() == before
    (tmp_path / "models.safetensors").mkdir()
    assert _train(pair, "--out", str(tmp_path / "models.safetensors"), "--epochs", "1", *TINY) == 2
    assert "is a folder" in _error_line(capsys)


def test_stopped_before_the_first_step_the_model_file_is_left_as_it_was(pair, tmp_path, capsys, monkeypatch):
    out = Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "model.safetensors")
    before = out.read_bytes()

    real = core_train.train_iter

    def stopped_at_once(samples, stop=None, **kwargs):
        stop.set()  # as Ctrl-C before the first step does
        return (yield from real(samples, stop=stop, **kwargs))

    monkeypatch.setattr(core_train, "train_iter", stopped_at_once)
    assert _train(pair, "--out", str(out), "--epochs", "1", "--overwrite", *TINY) == 130
    assert "before its first step" in _error_line(capsys)
    assert out.read_bytes() == before


def test_stopped_after_some_steps_the_model_is_saved_and_the_exit_code_says_interrupted(pair, tmp_path, capsys,
                                                                                        monkeypatch):
    real = core_train.train_iter

    def stopped(samples, stop=None, **kwargs):
        generator = real(samples, stop=stop, **kwargs)
        yield next(generator)
        stop.set()  # as Ctrl-C during training does
        return (yield from generator)

    monkeypatch.setattr(core_train, "train_iter", stopped)
    out = tmp_path / "m.safetensors"
    assert _train(pair, "--out", str(out), "--epochs", "50", *TINY) == 130  # as scripts expect of Ctrl-C
    assert json.loads(capsys.readouterr().out)["stop_reason"] == "stopped"
    assert out.is_file()


def test_an_existing_model_file_is_replaced_only_with_overwrite_and_never_the_starting_model(pair, tmp_path, capsys):
    start = Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "start.safetensors")
    before = start.read_bytes()
    for extra in ([], ["--overwrite"]):  # the model fine-tuning starts from is an input
        assert _train(pair, "--init", str(start), "--out", str(start), "--epochs", "1", *extra, *TINY) == 2
        assert _error_line(capsys) == (f"napari-unet: error: {start} is the model training starts from (--init); "
                                       "write the new model to another file")
    other = tmp_path / "other.safetensors"
    other.write_bytes(before)
    assert _train(pair, "--out", str(other), "--epochs", "1", *TINY) == 2
    assert _error_line(capsys) == (f"napari-unet: error: {other} exists; choose another file name, or add "
                                   "--overwrite to replace it")
    assert start.read_bytes() == other.read_bytes() == before
    assert _train(pair, "--out", str(other), "--epochs", "1", "--overwrite", *TINY) == 0
    assert other.read_bytes() != before


def test_the_starting_model_is_found_as_training_finds_it(pair, tmp_path, capsys, monkeypatch):
    from napari_unet.core import registry

    packaged = tmp_path / "package-models"
    packaged.mkdir()
    Model.new(NetworkConfig(depth=2, base_width=4)).save(packaged / "shipped.safetensors")
    monkeypatch.setattr(registry, "_EMBEDDED", packaged)
    real = core_train.train_iter

    def stopped_at_once(samples, stop=None, **kwargs):  # the guard is what is tested, not training
        stop.set()
        return (yield from real(samples, stop=stop, **kwargs))

    monkeypatch.setattr(core_train, "train_iter", stopped_at_once)
    monkeypatch.chdir(tmp_path)
    for name in ("shipped", "scratch"):
        Model.new(NetworkConfig(depth=2, base_width=4)).save(f"{name}.safetensors")
    # An embedded name, and "scratch", read no file of the current folder: it may be replaced.
    for init in ("shipped", "scratch"):
        assert _train(pair, "--init", init, "--out", f"{init}.safetensors", "--overwrite", *TINY) == 130
        assert "before its first step" in _error_line(capsys)
    # The embedded model's own file is the one it starts from.
    before = (packaged / "shipped.safetensors").read_bytes()
    assert _train(pair, "--init", "shipped", "--out", str(packaged / "shipped.safetensors"), "--overwrite", *TINY) == 2
    assert "is the model training starts from (--init)" in _error_line(capsys)
    assert (packaged / "shipped.safetensors").read_bytes() == before


@pytest.mark.parametrize(("flag", "said"), [
    (["--diameter", "30"], "an object diameter is for fine-tuning a model"),
    (["--train-norm"], "--train-norm applies when fine-tuning a model (--init NAME or PATH)"),
])
def test_fine_tuning_flags_without_a_model_to_fine_tune_are_refused(pair, tmp_path, capsys, flag, said):
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", *flag, *TINY) == 2
    assert said in _error_line(capsys)
    assert not (tmp_path / "m.safetensors").exists()


def test_images_of_different_pixel_sizes_are_not_trained_together(pair, capsys, tmp_path):
    images, labels = pair
    image, label = tifffile.imread(images / "a.tif"), tifffile.imread(labels / "a.tif")
    tifffile.imwrite(images / "a.tif", image, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    tifffile.imwrite(images / "b.tif", image, imagej=True, resolution=(4.0, 4.0), metadata={"unit": "um"})
    tifffile.imwrite(labels / "b.tif", label)
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", *TINY) == 2
    said = _error_line(capsys)
    assert "a.tif and b.tif have different pixel sizes (0.5 x 0.5 um and 0.25 x 0.25 um)" in said
    assert said.endswith("train on images of one pixel size together, or give --pixel-size")
    # The same pixel size in another unit is the same pixel size.
    tifffile.imwrite(images / "b.tif", image, imagej=True, resolution=(0.002, 0.002), metadata={"unit": "nm"})
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", "--steps-per-epoch", "1",
                  "--val-fraction", "0", *TINY) == 0
    assert load_model_file(tmp_path / "m.safetensors").pixel_size == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize(("flags", "message"), [
    (["--seed", "-1"], "--seed"), (["--w0", "nan"], "--w0"), (["--augment", "-1"], "--augment"),
    (["--dice-weight", "-0.5"], "--dice-weight"), (["--depth", "12"], "depth is at most"),
    (["--patch-size", "100000"], "patch size must be from 8 to"),
    (["--out", ""], "argument --out: is empty"),  # an unset shell variable
    (["--out", ".safetensors"], "give the model file a name before .safetensors"),
])
def test_impossible_training_settings_are_refused(pair, tmp_path, capsys, flags, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = list(TINY)
    if flags[0] in settings:  # the flag under test replaces TINY's
        position = settings.index(flags[0])
        del settings[position : position + 2]
    out = [] if "--out" in flags else ["--out", str(tmp_path / "m.safetensors")]
    try:
        code = _train(pair, *out, *settings, *flags)
    except SystemExit as exit:  # argparse's refusal of a flag's value
        code = exit.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "labels"]


def test_labels_that_are_not_whole_numbers_are_one_line_naming_the_file(pair, tmp_path, capsys):
    tifffile.imwrite(pair[1] / "a.tif", np.full((64, 64), 0.5, np.float32))
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", *TINY) == 2
    # Among many files, the one to mend.
    assert _error_line(capsys) == "napari-unet: error: a.tif: labels must hold whole numbers (0 = background, 1..N = objects)"


def test_an_image_given_as_labels_is_said_to_look_like_one(pair, tmp_path, capsys):
    images, labels = pair
    tifffile.imwrite(labels / "a.tif", tifffile.imread(images / "a.tif"))  # the image, by mistake
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", "--steps-per-epoch", "1",
                  *TINY) == 0
    err = capsys.readouterr().err
    assert "napari-unet: warning: a.tif: the labels look like an image, not labels" in err
    assert main(["evaluate", "--pred", str(labels), "--gt", str(images)]) == 0
    assert f"warning: {images / 'a.tif'} (ground truth): the labels look like an image" in capsys.readouterr().err
    # Real labels are not taken for an image.
    tifffile.imwrite(labels / "a.tif", synthetic_nuclei((64, 64), count=6, seed=0)[1].astype(np.uint16))
    assert main(["evaluate", "--pred", str(labels), "--gt", str(labels)]) == 0
    assert "look like an image" not in capsys.readouterr().err


def test_a_colour_training_image_is_named_in_its_warning(pair, tmp_path, capsys):
    image = tifffile.imread(pair[0] / "a.tif")
    tifffile.imwrite(pair[0] / "a.tif", np.stack([image] * 3, axis=-1), photometric="rgb")
    assert _train(pair, "--out", str(tmp_path / "m.safetensors"), "--epochs", "1", "--steps-per-epoch", "1",
                  *TINY) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert any(line.startswith("napari-unet: warning: a.tif: ") and "gray" in line for line in warnings), warnings


def test_the_same_files_as_images_and_labels_are_refused(pair, tmp_path, capsys):
    images, _ = pair
    assert main(["train", "--images", str(images), "--labels", str(images), "--out", str(tmp_path / "m"), *TINY]) == 2
    assert "both image and labels" in _error_line(capsys)


def test_a_fine_tuned_model_is_not_named_and_scored_as_the_one_it_started_from(pair, tmp_path, capsys):
    parent = Model.new(NetworkConfig(depth=2, base_width=4), name="nuclei", training_data="DSB2018",
                       evaluation={"ap50_pooled": 0.86}).save(tmp_path / "parent.safetensors")
    assert _train(pair, "--out", str(tmp_path / "child.safetensors"), "--init", str(parent), "--epochs", "1",
                  "--steps-per-epoch", "2", "--val-fraction", "0", *TINY) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["unchanged"] is False
    child = load_model_file(tmp_path / "child.safetensors")
    assert child.name == "" and child.evaluation == {}
    assert "fine-tuned from nuclei on 1 image(s)" in child.training_data and "DSB2018" in child.training_data


def test_a_result_that_cannot_be_written_is_a_failure_in_one_line_not_a_usage_mistake(pair, tmp_path, capsys,
                                                                                       monkeypatch):
    def disk_full(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    report = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pair[1]), "--gt", str(pair[1]), "--json", str(report)]) == 1
    assert _error_line(capsys) == f"napari-unet: error: cannot write {report}: no space left on device"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["images", "labels"]  # no partial file


def test_a_cluster_that_lost_its_workers_is_a_failure_in_one_line(pair, tmp_path, capsys, monkeypatch):
    from napari_unet.core import batch
    from napari_unet.core.errors import ClusterError

    def lost(*args, **kwargs):
        raise ClusterError("the Dask cluster lost a plane: its workers stopped or were killed")
        yield  # a generator, as the real one

    monkeypatch.setattr(batch, "predict_files_iter", lost)
    assert main(["predict", "--model", "nuclei", str(pair[0]), "--out", str(tmp_path / "o")]) == 1
    assert _error_line(capsys) == "napari-unet: error: the Dask cluster lost a plane: its workers stopped or were killed"


def test_evaluate_never_writes_its_json_over_a_label_file(pair, capsys):
    labels = pair[1] / "a.tif"
    before = labels.read_bytes()
    assert main(["evaluate", "--pred", str(labels), "--gt", str(labels), "--json", str(labels)]) == 2
    assert "ending in .json" in _error_line(capsys)
    assert labels.read_bytes() == before


def test_evaluate_counts_the_objects_of_a_binary_mask_and_refuses_probabilities(pair, tmp_path, capsys):
    labels = tifffile.imread(pair[1] / "a.tif")
    tifffile.imwrite(tmp_path / "mask.tif", ((labels > 0) * 255).astype(np.uint8))
    from scipy import ndimage

    components = ndimage.label(labels > 0)[0]
    tifffile.imwrite(tmp_path / "components.tif", components.astype(np.uint16))
    assert main(["evaluate", "--pred", str(tmp_path / "components.tif"), "--gt", str(tmp_path / "mask.tif"),
                 "--json", str(tmp_path / "scores.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "scores.json").read_text())["ap_pooled"][0] == 1.0
    tifffile.imwrite(tmp_path / "probability.tif", np.random.default_rng(0).random((64, 64)).astype(np.float32))
    assert main(["evaluate", "--pred", str(tmp_path / "probability.tif"), "--gt", str(tmp_path / "mask.tif")]) == 2
    assert "whole numbers" in _error_line(capsys)


def test_predict_into_a_file_or_on_a_missing_device_is_one_line(pair, tmp_path, capsys):
    model = Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "m.safetensors")
    (tmp_path / "taken.tif").write_bytes(b"a file")
    assert main(["predict", "--model", str(model), str(pair[0]), "--out", str(tmp_path / "taken.tif")]) == 2
    assert "is a file" in _error_line(capsys)
    import torch

    if not torch.cuda.is_available():
        assert main(["predict", "--model", str(model), str(pair[0]), "--out", str(tmp_path / "o"), "--device", "cuda"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "CUDA" in err[0]
        assert not (tmp_path / "o").exists()


def test_sample_sizes_beyond_a_plane_of_4096_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["sample", "--out", str(tmp_path), "--size", "100000"])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "must be from 32 to 4096 pixels, not 100000" in err[0]


def test_sample_does_not_overwrite_files_without_being_asked(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path), "--count", "1", "--size", "64"]) == 0
    written = tmp_path / "labels" / "nuclei_000.tif"
    before = written.stat().st_mtime_ns
    # A second run of the quick start finds its own sample, and keeps it.
    assert main(["sample", "--out", str(tmp_path), "--count", "1", "--size", "64"]) == 0
    assert written.stat().st_mtime_ns == before
    tifffile.imwrite(written, np.zeros((8, 8), np.uint16))  # the user's own file by that name
    assert main(["sample", "--out", str(tmp_path), "--count", "1", "--size", "64"]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert tifffile.imread(written).shape == (8, 8)
    assert main(["sample", "--out", str(tmp_path), "--count", "1", "--size", "64", "--overwrite"]) == 0
    assert tifffile.imread(written).shape == (64, 64)


def test_a_truncated_stack_is_reported_in_one_line_not_segmented_as_fewer_planes(tmp_path, capsys):
    model = Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "m.safetensors")
    tifffile.imwrite(tmp_path / "whole.tif", np.zeros((12, 32, 32), np.uint16), photometric="minisblack")
    content = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "cut.tif").write_bytes(content[: len(content) // 2])
    assert main(["predict", "--model", str(model), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "damaged or truncated" in err and not (tmp_path / "out" / "cut.tif").exists()
    # tifffile's own log lines stay off the screen without -v; the one-line report says it all.
    assert "tifffile" not in err.lower().replace("tifffile.tiff", "")


def test_evaluate_splits_a_binary_mask_stack_plane_by_plane(tmp_path, capsys):
    # Cells of one plane overlap cells of the next: counted in 3D they would be one object.
    planes = [synthetic_nuclei((64, 64), count=6, seed=seed)[1] for seed in (1, 2)]
    tifffile.imwrite(tmp_path / "mask.tif", np.stack([(plane > 0) * 255 for plane in planes]).astype(np.uint8))
    from scipy import ndimage

    tifffile.imwrite(tmp_path / "labels.tif", np.stack([ndimage.label(plane > 0)[0] for plane in planes]).astype(np.uint16))
    report = tmp_path / "report.json"
    assert main(["evaluate", "--pred", str(tmp_path / "labels.tif"), "--gt", str(tmp_path / "mask.tif"),
                 "--json", str(report)]) == 0
    result = json.loads(report.read_text())
    assert result["planes"] == 2 and result["ap_pooled"][0] == 1.0 and result["v_rand"] == 1.0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "2 plane(s) of 1 image(s)" and table[1].endswith("  1.000")


def test_train_takes_the_objects_diameter_to_fine_tune_at_the_models_scale(pair, tmp_path, capsys, monkeypatch):
    parent = Model.new(NetworkConfig(depth=2, base_width=4), object_diameter=12.0).save(tmp_path / "parent.safetensors")
    factors = []
    real = core_train.scale_factor
    monkeypatch.setattr(core_train, "scale_factor", lambda *args: factors.append(real(*args)) or factors[-1])
    assert _train(pair, "--out", str(tmp_path / "child.safetensors"), "--init", str(parent), "--diameter", "24",
                  "--epochs", "1", "--steps-per-epoch", "1", "--val-fraction", "0", *TINY) == 0
    assert factors == [0.5]  # 24-pixel objects halved to the model's 12
    with pytest.raises(SystemExit) as refused:
        _train(pair, "--out", str(tmp_path / "other.safetensors"), "--diameter", "-3", *TINY)
    assert refused.value.code == 2 and "must be a positive number" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["predict", "--model", "nuclei", "--out", "o", "x.tif", "--tile-size", "abc"],
     "argument --tile-size: must be a positive whole number, not 'abc'"),
    (["predict", "--model", "nuclei", "--out", "o", "--intensity-range", "100,2600", "x.tif"],
     "argument --intensity-range: must be two numbers with a space between them, LOW HIGH, not '100,2600'"),
    (["predict", "--model", "nuclei", "--out", "o", "x.tif", "--threshold", "half"],
     "argument --threshold: must be a probability, from 0 to 1, not 'half'"),
    (["predict", "x.tif"], "the following arguments are required: --model, --out"),
    (["segment", "x.tif"], "argument COMMAND: invalid choice: 'segment'"),
])
def test_malformed_command_lines_are_refused_in_one_line_that_says_where_help_is(capsys, argv, message):
    with pytest.raises(SystemExit) as refused:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert refused.value.code == 2
    assert len(err) == 1 and message in err[0]  # not argparse's usage block above it
    command = "napari-unet" if argv[0] == "segment" else f"napari-unet {argv[0]}"
    assert err[0].startswith(f"{command}: error: ") and err[0].endswith(f"(see {command} --help)")


def test_labels_without_an_object_are_one_line_and_write_no_model(pair, tmp_path, capsys):
    images, labels = pair
    tifffile.imwrite(labels / "a.tif", np.zeros((64, 64), np.uint16))
    out = tmp_path / "empty.safetensors"
    assert _train(pair, "--out", str(out), "--epochs", "1", *TINY) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "error: the annotations contain no object" in errors[0]
    assert not out.exists()
