"""Reading and writing TIFF stacks page by page: axes, page order, metadata, safety."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.core import tiffstream
from napari_unet.core.errors import InputError
from napari_unet.core.io import read_tiff
from napari_unet.core.tiffstream import PageTiffWriter, TiffMetadata, TiffPageReader, TiffPlanes, partial_path


def _stack(shape, dtype=np.uint16):
    values = np.arange(np.prod(shape)) % 251
    return values.reshape(shape).astype(dtype)


def _copy(source, target, dtype=None):
    """Stream every page of ``source`` into ``target`` with the reader's axes and metadata."""
    with TiffPageReader(source) as reader, PageTiffWriter(target, reader.shape, reader.axes, dtype or reader.dtype,
                                                          reader.metadata) as writer:
        for index in range(reader.pages):
            writer.write(reader.read_page(index))
        writer.commit()
    return reader


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_plain_multipage_stack_round_trips_page_by_page(tmp_path, compression, dtype):
    data = _stack((2, 3, 17, 13), dtype)
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack", compression=compression,
                     resolution=(4.0, 2.0), resolutionunit="CENTIMETER")
    reader = _copy(tmp_path / "in.tif", tmp_path / "out.tif")
    assert (reader.axes, reader.shape, reader.pages, reader.dtype) == ("QQYX", (2, 3, 17, 13), 6, np.dtype(dtype))
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.series[0].shape == data.shape and tif.series[0].dtype == dtype
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
        page = tif.pages.first
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        assert page.tags["XResolution"].value == (4, 1) and page.tags["YResolution"].value == (2, 1)
        assert page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER


def test_imagej_hyperstack_keeps_axes_and_calibration(tmp_path):
    data = _stack((2, 3, 2, 16, 12))
    tifffile.imwrite(tmp_path / "in.tif", data, imagej=True, resolution=(1 / 0.5, 1 / 0.5),
                     metadata={"axes": "TZCYX", "unit": "um", "spacing": 2.5, "finterval": 3.0})
    _copy(tmp_path / "in.tif", tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZCYX"
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
        metadata = tif.imagej_metadata
        assert (metadata["unit"], metadata["spacing"], metadata["finterval"]) == ("um", 2.5, 3.0)
        assert (metadata["frames"], metadata["slices"], metadata["channels"]) == (2, 3, 2)
    info = read_tiff(tmp_path / "out.tif")[1]
    assert info.pixel_size == pytest.approx((0.5, 0.5)) and info.unit == "um"


def test_ome_tiff_keeps_axes_and_physical_sizes(tmp_path):
    data = _stack((3, 2, 16, 12), np.float32)
    tifffile.imwrite(tmp_path / "in.ome.tif", data, ome=True, photometric="minisblack",
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.3, "PhysicalSizeY": 0.4, "PhysicalSizeZ": 1.5,
                               "PhysicalSizeXUnit": "µm"})
    reader = _copy(tmp_path / "in.ome.tif", tmp_path / "out.ome.tif", np.uint16)
    assert reader.info.pixel_size == pytest.approx((0.4, 0.3))
    with tifffile.TiffFile(tmp_path / "out.ome.tif") as tif:
        assert tif.is_ome and tif.series[0].axes == "ZCYX" and tif.series[0].dtype == np.uint16
        np.testing.assert_array_equal(tif.series[0].asarray(), data.astype(np.uint16))
        for text in ('PhysicalSizeX="0.3"', 'PhysicalSizeY="0.4"', 'PhysicalSizeZ="1.5"'):
            assert text in tif.ome_metadata
    info = read_tiff(tmp_path / "out.ome.tif")[1]
    assert info.pixel_size == pytest.approx((0.4, 0.3)) and info.unit == "um"


def test_bigtiff_input_is_read_and_big_outputs_are_bigtiff(tmp_path, monkeypatch):
    data = _stack((3, 16, 16))
    tifffile.imwrite(tmp_path / "in.tif", data, bigtiff=True, photometric="minisblack")
    monkeypatch.setattr(tiffstream, "BIGTIFF_BYTES", 1000)  # as if the stack were over 2 GiB
    _copy(tmp_path / "in.tif", tmp_path / "out.tif")
    with tifffile.TiffFile(tmp_path / "out.tif") as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.series[0].asarray(), data)


def test_reader_reads_only_the_page_asked_for(tmp_path):
    data = _stack((5, 8, 8))
    tifffile.imwrite(tmp_path / "in.tif", data, photometric="minisblack", compression="zlib")
    with TiffPageReader(tmp_path / "in.tif") as reader:
        np.testing.assert_array_equal(reader.read_page(3), data[3])
        np.testing.assert_array_equal(reader.read_page(0), data[0])


def test_writer_is_only_visible_under_its_name_once_complete(tmp_path):
    target = tmp_path / "labels.tif"
    with PageTiffWriter(target, (2, 4, 4), "ZYX", np.uint16, TiffMetadata()) as writer:
        writer.write(np.ones((4, 4)))
        assert partial_path(target).is_file() and not target.exists()
        with pytest.raises(ValueError, match="1 of 2 pages"):
            writer.commit()
        writer.write(np.ones((4, 4)))
        assert writer.commit() == target
    assert target.is_file() and not partial_path(target).exists()


def test_writer_left_without_commit_deletes_its_partial_file(tmp_path):
    target = tmp_path / "labels.tif"
    target.write_bytes(b"an earlier result")
    with pytest.raises(KeyboardInterrupt), PageTiffWriter(target, (3, 4, 4), "ZYX", np.uint16) as writer:
        writer.write(np.ones((4, 4)))
        raise KeyboardInterrupt
    assert not partial_path(target).exists()
    assert target.read_bytes() == b"an earlier result"


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("kind", ["plain", "imagej", "ome"])
def test_truncated_files_are_reported_not_read_as_fewer_planes(tmp_path, kind, compression):
    data = _stack((2, 3, 32, 32))
    options = {"plain": {"photometric": "minisblack"}, "imagej": {"imagej": True, "metadata": {"axes": "ZCYX"}},
               "ome": {"ome": True, "photometric": "minisblack", "metadata": {"axes": "ZCYX"}}}[kind]
    tifffile.imwrite(tmp_path / "whole.tif", data, compression=compression, **options)
    content = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(content[: len(content) // 2])
    with pytest.raises(InputError, match="cut.tif"):
        with TiffPageReader(tmp_path / "cut.tif") as reader:
            for index in range(reader.pages):
                reader.read_page(index)


def test_files_that_are_not_tiffs_are_input_errors(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(InputError, match="not a readable TIFF"):
        TiffPageReader(tmp_path / "broken.tif")
    with pytest.raises(InputError, match="file not found"):
        TiffPageReader(tmp_path / "missing.tif")


def test_tiff_planes_read_the_planes_asked_for_and_count_their_percentiles_plane_by_plane(tmp_path):
    from napari_unet.core.normalize import Normalization

    stack = np.random.default_rng(0).integers(0, 60000, (2, 5, 30, 40)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "tzyx.tif", stack, imagej=True, metadata={"axes": "TZYX"})
    planes = stack.reshape(10, 1, 30, 40)  # as as_planes gives them
    with TiffPageReader(tmp_path / "tzyx.tif") as reader:
        lazy = TiffPlanes(reader)
        assert lazy.shape == planes.shape and lazy.stack_shape == (2, 5) and lazy.dtype == np.uint16
        np.testing.assert_array_equal(lazy[3], planes[3])
        np.testing.assert_array_equal(lazy[-1], planes[-1])
        run = lazy[2:7]  # not read yet
        assert isinstance(run, TiffPlanes) and run.shape == (5, 1, 30, 40)
        np.testing.assert_array_equal(run[1], planes[3])
        np.testing.assert_array_equal(lazy[1:4, :, 5:10, 2:9], planes[1:4, :, 5:10, 2:9])
        np.testing.assert_array_equal(np.stack(list(run)), planes[2:7])
        assert Normalization().range_of(lazy) == Normalization().range_of(planes)
        with pytest.raises(IndexError):
            lazy[10]
    # Floating point too, its range counted exactly, as an array's.
    deconvolved = stack[0].astype(np.float32) * np.float32(-0.013) + np.float32(2.5)
    deconvolved[0, 0, :4] = np.nan
    tifffile.imwrite(tmp_path / "float.tif", deconvolved)
    with TiffPageReader(tmp_path / "float.tif") as reader:
        lazy = TiffPlanes(reader)
        assert lazy.dtype == np.float32
        range_of = Normalization().range_of(lazy)
        assert range_of == Normalization().range_of(deconvolved)
        finite = deconvolved[np.isfinite(deconvolved)]
        np.testing.assert_allclose(range_of, np.percentile(finite, [1.0, 99.8]), rtol=1e-6)
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((2, 8, 8, 3), np.uint8), photometric="rgb")
    with TiffPageReader(tmp_path / "rgb.tif") as reader, pytest.raises(InputError, match="one-channel"):
        TiffPlanes(reader)
