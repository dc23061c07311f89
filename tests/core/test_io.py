"""TIFF reading and writing, pixel sizes, finding and pairing files."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import tifffile

from napari_unet.core.errors import InputError, WriteError
from napari_unet.core.io import ImageInfo, collect_tiffs, pair_by_name, read_tiff, tiff_pixel_size, write_tiff


def _data(dtype, shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -10**6), min(info.max, 10**6), size=shape, endpoint=True).astype(dtype)
    return rng.normal(0.0, 100.0, size=shape).astype(dtype)


# --- round trip ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
@pytest.mark.parametrize("shape", [(30, 41), (3, 30, 41), (4, 17, 9), (7, 30, 41)])
def test_round_trip(tmp_path, dtype, shape):
    data = _data(dtype, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no tifffile deprecation about guessing RGB either
        path = write_tiff(tmp_path / "image.tif", data)
        read, info = read_tiff(path)
    assert path == tmp_path / "image.tif"
    assert read.dtype == data.dtype and read.shape == data.shape
    np.testing.assert_array_equal(read, data)
    assert isinstance(info, ImageInfo)
    assert len(info.axes) == data.ndim and info.axes.endswith("YX")
    assert "S" not in info.axes  # planes are never stored as colour samples
    assert info.pixel_size is None and info.unit == ""
    assert os.listdir(tmp_path) == ["image.tif"]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
def test_label_stacks_are_not_written_as_rgb(tmp_path, dtype):
    data = _data(dtype, (3, 20, 24))
    write_tiff(tmp_path / "labels.tif", data)
    with tifffile.TiffFile(tmp_path / "labels.tif") as tif:
        assert tif.pages.first.photometric == tifffile.PHOTOMETRIC.MINISBLACK


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.int32])
def test_four_dimensional_round_trip(tmp_path, dtype):
    data = _data(dtype, (2, 3, 10, 12))
    read, _ = read_tiff(write_tiff(tmp_path / "stack.tif", data))
    assert read.shape == data.shape
    np.testing.assert_array_equal(read, data)


def test_bool_and_int64_are_written(tmp_path):
    mask = np.zeros((10, 12), bool)
    mask[2:4, 5] = True
    read, _ = read_tiff(write_tiff(tmp_path / "mask.tif", mask))
    np.testing.assert_array_equal(read.astype(bool), mask)
    labels = np.arange(120, dtype=np.int64).reshape(10, 12)
    read, _ = read_tiff(write_tiff(tmp_path / "labels.tif", labels))
    np.testing.assert_array_equal(read, labels)


def test_write_creates_folders_and_compresses(tmp_path):
    data = np.zeros((200, 200), np.uint16)
    path = write_tiff(tmp_path / "a" / "b" / "zeros.tif", data)
    assert path.is_file()
    assert path.stat().st_size < data.nbytes / 10
    with tifffile.TiffFile(path) as tif:
        assert tif.pages.first.compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_overwrite_replaces_the_file(tmp_path):
    path = tmp_path / "image.tif"
    write_tiff(path, np.zeros((5, 5), np.uint8))
    write_tiff(path, np.full((6, 7), 9, np.uint16))
    read, _ = read_tiff(path)
    assert read.shape == (6, 7) and read.dtype == np.uint16 and read.max() == 9
    assert os.listdir(tmp_path) == ["image.tif"]


# --- pixel size ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("pixel_size", [(0.5, 0.25), (0.1625, 0.1625), (2.0, 3.0)])
def test_pixel_size_round_trip(tmp_path, dtype, ndim, pixel_size):
    data = _data(dtype, (2, 20, 30)[-ndim:])
    path = write_tiff(tmp_path / "image.tif", data, pixel_size=pixel_size)
    read, info = read_tiff(path)
    np.testing.assert_array_equal(read, data)
    assert info.pixel_size == pytest.approx(pixel_size, rel=1e-5)
    assert info.unit == "um"


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_pixel_size_in_another_unit(tmp_path, dtype):
    path = write_tiff(tmp_path / "image.tif", _data(dtype, (10, 10)), pixel_size=(20.0, 10.0), unit="nm")
    _, info = read_tiff(path)
    assert info.pixel_size == pytest.approx((20.0, 10.0))
    if dtype == np.uint16:  # ImageJ files record any unit; plain TIFFs only centimeters
        assert info.unit == "nm"


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])
def test_imagej_resolution_and_unit(tmp_path, unit):
    path = tmp_path / "imagej.tif"
    tifffile.imwrite(path, np.zeros((3, 16, 20), np.uint16), imagej=True, resolution=(1 / 0.3, 1 / 0.6),
                     metadata={"axes": "ZYX", "unit": unit})
    data, info = read_tiff(path)
    assert data.shape == (3, 16, 20) and info.axes == "ZYX"
    assert info.pixel_size == pytest.approx((0.6, 0.3))
    assert info.unit == "um"


@pytest.mark.parametrize("dtype", [np.uint16, np.float32, np.int32])
@pytest.mark.parametrize("unit", ["µm", "\u03bcm", "micron"])
def test_micrometer_spellings_are_written_as_um(tmp_path, dtype, unit):
    path = write_tiff(tmp_path / "image.tif", _data(dtype, (2, 10, 10)), pixel_size=(0.3, 0.3), unit=unit)
    _, info = read_tiff(path)
    assert info.pixel_size == pytest.approx((0.3, 0.3)) and info.unit == "um"


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ({"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4}, ((0.4, 0.2), "um")),
        ({"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4, "PhysicalSizeXUnit": "µm",
          "PhysicalSizeYUnit": "µm"}, ((0.4, 0.2), "um")),
        ({"PhysicalSizeX": 65.0, "PhysicalSizeY": 65.0, "PhysicalSizeXUnit": "nm",
          "PhysicalSizeYUnit": "nm"}, ((65.0, 65.0), "nm")),
        ({"PhysicalSizeX": 1.5e-1}, ((0.15, 0.15), "um")),
    ],
)
def test_ome_physical_size(tmp_path, sizes, expected):
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(path, np.zeros((24, 32), np.uint16), ome=True, metadata=sizes)
    data, info = read_tiff(path)
    assert data.shape == (24, 32)
    assert info.pixel_size == pytest.approx(expected[0])
    assert info.unit == expected[1]


def test_an_ome_file_of_several_images_gives_the_pixel_size_of_the_image_read(tmp_path):
    path = tmp_path / "two.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as writer:
        writer.write(np.zeros((2, 24, 32), np.uint16), photometric="minisblack",
                     metadata={"axes": "ZYX", "PhysicalSizeX": 0.004, "PhysicalSizeY": 0.004, "PhysicalSizeZ": 0.05})
        # A smaller second image (an overview, a pyramid level) with pixels of its own.
        writer.write(np.zeros((6, 8), np.uint16), photometric="minisblack",
                     metadata={"axes": "YX", "PhysicalSizeX": 0.016, "PhysicalSizeY": 0.016})
    data, info = read_tiff(path)
    assert data.shape == (2, 24, 32)
    assert info.pixel_size == pytest.approx((0.004, 0.004)) and info.unit == "um"


def test_the_pixel_size_of_an_open_file_is_the_one_read_tiff_gives(tmp_path):
    ome = tmp_path / "image.ome.tif"
    tifffile.imwrite(ome, np.zeros((24, 32), np.uint16), ome=True,
                     metadata={"PhysicalSizeX": 4.0, "PhysicalSizeY": 2.0, "PhysicalSizeXUnit": "nm"})
    imagej = write_tiff(tmp_path / "imagej.tif", np.zeros((24, 32), np.uint16), pixel_size=(0.5, 0.25))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((24, 32), np.uint8))
    for path, expected in [(ome, ((2.0, 4.0), "nm")), (imagej, ((0.5, 0.25), "um")), (plain, (None, ""))]:
        with tifffile.TiffFile(path) as tif:
            size, unit = tiff_pixel_size(tif)
        assert (size is None) == (expected[0] is None) and unit == expected[1]
        assert size is None or size == pytest.approx(expected[0], rel=1e-5)
        assert (size, unit) == (read_tiff(path)[1].pixel_size, read_tiff(path)[1].unit)


def test_ome_pixel_size_survives_writing_labels(tmp_path):
    source = tmp_path / "image.ome.tif"
    tifffile.imwrite(source, np.zeros((24, 32), np.uint16), ome=True,
                     metadata={"PhysicalSizeX": 0.2, "PhysicalSizeY": 0.4, "PhysicalSizeXUnit": "µm"})
    _, info = read_tiff(source)
    _, written = read_tiff(write_tiff(tmp_path / "labels.tif", np.zeros((24, 32), np.int32),
                                      info.pixel_size, info.unit))
    assert written.pixel_size == pytest.approx((0.4, 0.2))
    assert written.unit == "um"


def test_the_z_step_is_read_in_the_unit_of_the_pixel_size(tmp_path):
    stack = np.zeros((5, 16, 16), np.uint16)
    tifffile.imwrite(tmp_path / "imagej.tif", stack, imagej=True, resolution=(4.0, 4.0),
                     metadata={"spacing": 1.0, "unit": "um", "axes": "ZYX"})
    info = read_tiff(tmp_path / "imagej.tif")[1]
    assert (info.pixel_size, info.z_step, info.z_scale) == ((0.25, 0.25), 1.0, 4.0)
    tifffile.imwrite(tmp_path / "ome.ome.tif", stack, metadata={
        "axes": "ZYX", "PhysicalSizeX": 0.2, "PhysicalSizeY": 0.2, "PhysicalSizeZ": 500, "PhysicalSizeZUnit": "nm"})
    info = read_tiff(tmp_path / "ome.ome.tif")[1]
    assert info.z_step == pytest.approx(0.5) and info.z_scale == pytest.approx(2.5)
    # Without a pixel size a z step says nothing of the stack's anisotropy.
    tifffile.imwrite(tmp_path / "spacing_only.tif", stack, imagej=True, metadata={"spacing": 2.0, "axes": "ZYX"})
    assert read_tiff(tmp_path / "spacing_only.tif")[1].z_scale is None
    tifffile.imwrite(tmp_path / "plain.tif", stack)
    assert read_tiff(tmp_path / "plain.tif")[1].z_step is None


def test_default_resolution_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((10, 10), np.uint8), resolution=(1.0, 1.0))
    assert read_tiff(path)[1].pixel_size is None


def test_inch_resolution_is_not_a_pixel_size(tmp_path):
    path = tmp_path / "scan.tif"
    tifffile.imwrite(path, np.zeros((10, 10), np.uint8), resolution=(300.0, 300.0), resolutionunit="INCH")
    info = read_tiff(path)[1]
    assert info.pixel_size is None and info.unit == ""


def test_centimeter_resolution_is_converted_to_micrometers(tmp_path):
    path = tmp_path / "cm.tif"
    tifffile.imwrite(path, np.zeros((10, 10), np.uint16), resolution=(1e4 / 0.5, 1e4 / 0.25),
                     resolutionunit="CENTIMETER")
    info = read_tiff(path)[1]
    assert info.pixel_size == pytest.approx((0.25, 0.5)) and info.unit == "um"


# --- unreadable files ----------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"", b"II*\x00", b"not a tiff at all" * 10, bytes(range(256)) * 4],
    ids=["empty", "header-only", "text", "bytes"],
)
def test_unreadable_file_is_an_input_error_naming_the_file(tmp_path, content):
    path = tmp_path / "broken.tif"
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_tiff(path)
    assert str(path) in str(raised.value)


@pytest.mark.parametrize("keep", [0.5, 0.95])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_truncated_file_is_an_input_error(tmp_path, keep, dtype):
    path = write_tiff(tmp_path / "image.tif", _data(dtype, (2, 64, 64)))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError) as raised:
        read_tiff(path)
    assert str(raised.value) == f"{path} is not a readable TIFF file: it is damaged or truncated"


@pytest.mark.parametrize(("content", "reason"), [
    (b"II*\x00\x08\x00\x00\x00", "it is damaged or truncated"),  # a header and nothing else
    (b"II*\x00garbage", "it is damaged or truncated"),
    (b"plain text, renamed", "it is not a TIFF file"),
])
def test_unreadable_files_are_said_in_plain_words_whichever_part_of_tifffile_fails(tmp_path, content, reason):
    path = tmp_path / "image.tif"
    path.write_bytes(content)
    with pytest.raises(InputError) as raised:
        read_tiff(path)
    # Not tifffile's own words ("list index out of range"), which stay the cause.
    assert str(raised.value) == f"{path} is not a readable TIFF file: {reason}"
    assert raised.value.__cause__ is not None


@pytest.mark.parametrize(("error", "reason"), [
    (PermissionError(13, "Permission denied"), "the system cannot read it (permission denied)"),
    (ValueError("<COMPRESSION.EER_V0: 65000> requires the 'imagecodecs' package"),
     "it uses a compression that cannot be decoded here (<COMPRESSION.EER_V0: 65000> requires the 'imagecodecs' "
     "package)"),
    (IndexError("list index out of range"), "it is damaged or truncated"),
])
def test_why_a_tiff_is_unreadable_is_said_as_far_as_it_is_known(error, reason):
    from napari_unet.core.io import unreadable_tiff

    assert str(unreadable_tiff("cells.tif", error)) == f"cells.tif is not a readable TIFF file: {reason}"
    assert str(unreadable_tiff("cells.tif", error, "3 of 20")) == f"cells.tif: page 3 of 20 is not readable: {reason}"


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_tiff(tmp_path / "absent.tif")
    with pytest.raises(InputError):
        read_tiff(tmp_path)  # a folder


# --- atomic write --------------------------------------------------------------------


@pytest.mark.parametrize(("error", "raised"), [
    (OSError(28, "No space left on device"), WriteError),  # said in plain words, naming the file
    (KeyboardInterrupt(), KeyboardInterrupt),
])
def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch, error, raised):
    path = tmp_path / "labels.tif"
    write_tiff(path, np.full((8, 8), 3, np.int32))
    before = path.read_bytes()

    def failing_imwrite(filename, data, **options):
        with open(filename, "wb") as handle:
            handle.write(b"II*\x00partial")
        raise error

    monkeypatch.setattr(tifffile, "imwrite", failing_imwrite)
    with pytest.raises(raised) as failure:
        write_tiff(path, np.zeros((8, 8), np.int32))
    if raised is WriteError:
        assert str(failure.value) == f"cannot write {path}: no space left on device"
    with pytest.raises(raised):
        write_tiff(tmp_path / "new.tif", np.zeros((8, 8), np.int32))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["labels.tif"]


# --- finding files -------------------------------------------------------------------


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    for name in ("b.tif", "a.TIFF", "c.tiff", "notes.txt", "d.png"):
        (root / name).write_bytes(b"x")
    (root / "sub.tif").mkdir()  # a folder with a TIFF-like name
    (root / "inner").mkdir()
    (root / "inner" / "e.tif").write_bytes(b"x")
    return root


def test_collect_a_folder(folder):
    assert collect_tiffs(folder) == [folder / "a.TIFF", folder / "b.tif", folder / "c.tiff"]
    assert collect_tiffs(str(folder)) == collect_tiffs(folder)


def test_collect_a_glob(folder):
    assert collect_tiffs(str(folder / "*.tif")) == [folder / "b.tif"]
    assert collect_tiffs(str(folder / "[ab]*")) == [folder / "a.TIFF", folder / "b.tif"]
    assert collect_tiffs(str(folder / "*" / "*.tif")) == [folder / "inner" / "e.tif"]


def test_collect_a_file(folder):
    assert collect_tiffs(folder / "b.tif") == [folder / "b.tif"]


@pytest.mark.parametrize("spec", ["absent", "absent.tif", "absent/*.tif", "*.nothing"])
def test_collect_nothing_is_an_input_error(folder, spec):
    with pytest.raises(InputError) as raised:
        collect_tiffs(str(folder / spec))
    assert spec.split("/")[0] in str(raised.value)


def test_collect_a_folder_without_tiffs(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="no TIFF files"):
        collect_tiffs(tmp_path)


def test_pair_by_name(tmp_path):
    images = [tmp_path / "img" / f"{name}.tif" for name in ("a", "b", "c")]
    labels = [tmp_path / "lab" / name for name in ("c.tif", "a.tiff", "b.tif", "extra.tif")]
    pairs = pair_by_name(images, labels)
    assert pairs == [(images[0], labels[1]), (images[1], labels[2]), (images[2], labels[0])]


def test_single_files_pair_whatever_their_names(tmp_path):
    image, label = tmp_path / "raw.tif", tmp_path / "masks.tif"
    assert pair_by_name([image], [label]) == [(image, label)]


def test_a_missing_partner_is_an_input_error_naming_it(tmp_path):
    images = [tmp_path / f"{name}.tif" for name in ("a", "b", "lonely")]
    labels = [tmp_path / "labels" / f"{name}.tif" for name in ("a", "b")]
    with pytest.raises(InputError, match="lonely.tif") as raised:
        pair_by_name(images, labels)
    assert "1 image" in str(raised.value)


def test_many_missing_partners_are_summarized(tmp_path):
    images = [tmp_path / f"{index}.tif" for index in range(6)]
    with pytest.raises(InputError, match=r"6 image\(s\).*\.\.\.") as raised:
        pair_by_name(images, [tmp_path / "x.tif"])
    assert "3.tif" not in str(raised.value)


def test_written_files_are_readable_as_the_umask_allows_and_leave_no_temporary_file(tmp_path):
    import os

    from napari_unet.core.bundle import Model
    from napari_unet.core.model import NetworkConfig

    previous = os.umask(0o022)
    try:
        tiff = write_tiff(tmp_path / "labels.tif", np.zeros((8, 8), np.uint16))
        model = Model.new(NetworkConfig(depth=2, base_width=4)).save(tmp_path / "model.safetensors")
    finally:
        os.umask(previous)
    # A colleague can open a shared model or result (mkstemp would have made them 0600).
    assert (tiff.stat().st_mode & 0o777) == 0o644 and (model.stat().st_mode & 0o777) == 0o644
    assert sorted(path.name for path in tmp_path.iterdir()) == ["labels.tif", "model.safetensors"]


def test_a_folder_is_not_overwritten_by_a_file(tmp_path):
    (tmp_path / "out.tif").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        write_tiff(tmp_path / "out.tif", np.zeros((8, 8), np.uint16))
    assert (tmp_path / "out.tif").is_dir() and len(list(tmp_path.iterdir())) == 1


def test_a_truncated_stack_is_refused_not_read_as_one_plane(tmp_path):
    tifffile.imwrite(tmp_path / "whole.tif", np.arange(12 * 64 * 64, dtype=np.uint16).reshape(12, 64, 64),
                     photometric="minisblack")
    content = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match="cut.tif"):
        read_tiff(tmp_path / "cut.tif")


@pytest.mark.parametrize("compression", ["lzw", "jpeg", "deflate"])
def test_compressed_tiffs_of_common_exporters_are_read(tmp_path, compression):
    image = (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "image.tif", image, compression=compression, photometric="minisblack")
    data, _ = read_tiff(tmp_path / "image.tif")
    assert data.shape == (64, 64)
    if compression != "jpeg":  # lossy
        np.testing.assert_array_equal(data, image)


@pytest.mark.parametrize(("unit", "expected"), [("micron", ((1.0, 1.0), "um")), ("pixel", (None, "")), (None, (None, ""))])
def test_one_pixel_per_unit_is_a_pixel_size_only_in_a_unit_of_length(tmp_path, unit, expected):
    metadata = {"unit": unit} if unit else {}
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((8, 8), np.uint8), imagej=True, resolution=(1.0, 1.0),
                     metadata=metadata)
    info = read_tiff(tmp_path / "a.tif")[1]
    assert (info.pixel_size, info.unit) == expected
