"""The napari reader: TIFF layouts, pixel size as scale, channels, RGB and lazy reading."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_unet import _reader
from napari_unet._reader import get_reader
from napari_unet.core.errors import InputError


def _read(path):
    reader = get_reader(str(path))
    assert callable(reader)
    layers = reader(str(path))
    assert len(layers) == 1
    data, kwargs, layer_type = layers[0]
    assert layer_type == "image"
    return data, kwargs


def _hyperstack(path, compression=None):
    """An ImageJ ZCYX hyperstack with 0.5 x 0.25 um pixels and 2 um between planes."""
    data = np.arange(4 * 3 * 16 * 20, dtype=np.uint16).reshape(4, 3, 16, 20)
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        compression=compression,
        resolution=(1 / 0.25, 1 / 0.5),  # (x, y) pixels per unit
        # ImageJ itself writes the micro sign escaped like this.
        metadata={"axes": "ZCYX", "spacing": 2.0, "unit": "\\u00B5m"},
    )
    return data


def test_plain_multipage_stack(tmp_path):
    path = tmp_path / "stack.tif"
    stack = np.random.default_rng(0).integers(0, 255, (5, 24, 32), dtype=np.uint8)
    tifffile.imwrite(path, stack, metadata=None)  # plain pages, no shape metadata

    data, kwargs = _read(path)

    np.testing.assert_array_equal(data, stack)
    assert kwargs == {"name": "stack", "scale": (1.0, 1.0, 1.0), "rgb": False}


def test_imagej_hyperstack_gives_scale_units_and_channel_axis(tmp_path):
    path = tmp_path / "cells.tif"
    stack = _hyperstack(path)

    data, kwargs = _read(path)

    np.testing.assert_array_equal(data, stack)
    assert kwargs["name"] == "cells"
    assert kwargs["channel_axis"] == 1
    # scale and units leave out the channel axis, as napari applies them per channel.
    assert kwargs["scale"] == pytest.approx((2.0, 0.5, 0.25))
    assert kwargs["units"] == ("micrometer",) * 3


def test_ome_physical_size_gives_scale(tmp_path):
    path = tmp_path / "nuclei.ome.tif"
    stack = np.zeros((3, 16, 16), np.float32)
    metadata = {"axes": "ZYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1500.0}
    tifffile.imwrite(path, stack, ome=True, metadata={**metadata, "PhysicalSizeZUnit": "nm"})

    data, kwargs = _read(path)

    assert data.shape == (3, 16, 16)
    assert kwargs["scale"] == pytest.approx((1500.0, 0.4, 0.3))
    assert kwargs["units"] == ("nanometer", "micrometer", "micrometer")
    assert "channel_axis" not in kwargs


@pytest.mark.parametrize("planarconfig", ["contig", "separate"])
def test_rgb_samples_give_rgb_layer(tmp_path, planarconfig):
    path = tmp_path / "slide.tif"
    image = np.random.default_rng(1).integers(0, 255, (16, 24, 3), dtype=np.uint8)
    stored = image if planarconfig == "contig" else np.moveaxis(image, -1, 0)
    tifffile.imwrite(path, stored, photometric="rgb", planarconfig=planarconfig)

    data, kwargs = _read(path)

    np.testing.assert_array_equal(data, image)  # colour samples last, as napari wants
    assert kwargs["rgb"] is True
    assert kwargs["scale"] == (1.0, 1.0)
    assert "channel_axis" not in kwargs


@pytest.mark.parametrize(
    ("compression", "bigtiff"),
    [(None, False), ("zlib", True)],
    ids=["uncompressed-memmap", "zlib-bigtiff-pages"],
)
def test_large_files_open_lazily_one_page_per_chunk(tmp_path, monkeypatch, compression, bigtiff):
    path = tmp_path / "big.tif"
    stack = np.random.default_rng(2).integers(0, 4000, (6, 2, 16, 20), dtype=np.uint16)
    tifffile.imwrite(
        path,
        stack,
        compression=compression,
        bigtiff=bigtiff,
        photometric="minisblack",
        resolution=(1e4 / 0.5, 1e4 / 0.5),  # per centimetre
        resolutionunit="CENTIMETER",
        metadata={"axes": "ZCYX"},
    )
    eager_data, eager_kwargs = _read(path)

    monkeypatch.setattr(_reader, "LAZY_BYTES", 1024)
    data, kwargs = _read(path)

    assert isinstance(data, da.Array)
    assert data.chunksize == (1, 1, 16, 20)
    np.testing.assert_array_equal(data.compute(), eager_data)
    np.testing.assert_array_equal(eager_data, stack)
    assert kwargs == eager_kwargs
    assert kwargs["scale"] == pytest.approx((1.0, 0.5, 0.5))


def test_damaged_page_of_a_lazy_file_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "damaged.tif"
    _hyperstack(path, compression="zlib")
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[5].dataoffsets[0], tif.pages[5].databytecounts[0]
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(b"\xff" * count)
    monkeypatch.setattr(_reader, "LAZY_BYTES", 0)

    data, _ = _read(path)
    data[0].compute()  # pages of the first plane are intact

    with pytest.raises(InputError, match="damaged.tif: page 5"):
        data.compute()


@pytest.mark.parametrize("lazy", [False, True])
def test_a_truncated_stack_is_refused_not_shown_as_fewer_planes(tmp_path, monkeypatch, lazy):
    path = tmp_path / "cut.tif"
    _hyperstack(path)
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * 0.6)])  # tifffile would give one plane, with a log line
    if lazy:
        monkeypatch.setattr(_reader, "LAZY_BYTES", 0)
    with pytest.raises(InputError, match="cut.tif is not a readable TIFF file: it is damaged or truncated"):
        _read(path)


def test_a_list_of_paths_gives_one_layer_per_file(tmp_path):
    paths = [tmp_path / "a.tif", tmp_path / "b.TIFF"]
    for value, path in enumerate(paths):
        tifffile.imwrite(path, np.full((8, 8), value, np.uint8))

    reader = get_reader([str(p) for p in paths])
    layers = reader([str(p) for p in paths])

    assert [kwargs["name"] for _, kwargs, _ in layers] == ["a", "b"]
    assert [int(data[0, 0]) for data, _, _ in layers] == [0, 1]


@pytest.mark.parametrize("path", ["image.png", "labels.npy", ["a.tif", "b.png"], []])
def test_other_files_are_left_to_other_readers(path):
    assert get_reader(path) is None


def test_a_damaged_tiff_raises_an_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.tif"
    path.write_bytes(b"this is not a TIFF file")

    reader = get_reader(str(path))  # only the name is checked before reading

    with pytest.raises(InputError, match="broken.tif is not a readable TIFF file"):
        reader(str(path))


def test_layer_data_is_accepted_by_napari(tmp_path):
    from napari.components import ViewerModel

    path = tmp_path / "cells.tif"
    _hyperstack(path)
    data, kwargs = _read(path)

    layers = ViewerModel().add_image(data, **kwargs)

    assert len(layers) == 3
    for layer in layers:
        assert layer.data.shape == (4, 16, 20)
        np.testing.assert_allclose(layer.scale, (2.0, 0.5, 0.25))
        assert [str(unit) for unit in layer.units] == ["micrometer"] * 3


def test_viewer_opens_tiffs_with_this_plugin(make_napari_viewer, tmp_path):
    import npe2

    viewer = make_napari_viewer()  # discovers the installed plugins' manifests
    manager = npe2.PluginManager.instance()
    if "napari-unet-loop" not in manager or not manager.get_manifest("napari-unet-loop").contributions.readers:
        pytest.skip("napari.yaml has no reader contribution for napari_unet._reader:get_reader yet")
    path = tmp_path / "cells.tif"
    _hyperstack(path)

    layers = viewer.open(str(path), plugin="napari-unet-loop")

    assert len(layers) == 3
    assert all(layer.data.shape == (4, 16, 20) for layer in layers)
    np.testing.assert_allclose(layers[0].scale, (2.0, 0.5, 0.25))
