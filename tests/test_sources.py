import numpy as np
import pytest
from conftest import write_images

from workbench.core.sources import ImageFolderSource, SourceError, open_source, spread_first


def test_sample_photos_are_the_default():
    src = open_source(None)
    frames = list(src)
    assert len(frames) >= 4 and all(f.rgb.ndim == 3 and f.rgb.shape[2] == 3 for f in frames)


def test_labels_from_wnid_names_and_subfolders(tmp_path):
    write_images(tmp_path, ["n01440764_tench.JPEG", "goldfish/a.png", "n01484850/b.png", "misc/c.png"])
    frames = {f.origin.split("/")[-1]: f.label for f in ImageFolderSource(tmp_path)}
    assert frames == {"n01440764_tench.JPEG": 0, "a.png": 1, "b.png": 2, "c.png": None}


def test_corrupt_image_is_skipped_and_reported(tmp_path):
    write_images(tmp_path, ["a.png", "c.png"])
    (tmp_path / "b.jpg").write_bytes(b"\xff\xd8 broken")
    src = ImageFolderSource(tmp_path)
    frames = list(src)
    assert len(frames) == 2
    assert len(src.skipped) == 1 and src.skipped[0].path.endswith("b.jpg") and src.skipped[0].reason


def test_grayscale_becomes_rgb(tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((20, 30), np.uint8)).save(tmp_path / "g.png")
    (frame,) = list(open_source(tmp_path / "g.png"))
    assert frame.rgb.shape == (20, 30, 3)


def test_video_file_frames(tmp_path):
    import cv2

    path = tmp_path / "v.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for i in range(7):
        writer.write(np.full((48, 64, 3), i * 30, np.uint8))
    writer.release()
    src = open_source(path)
    frames = list(src)
    src.release()
    assert len(frames) == 7 and frames[0].rgb.shape == (48, 64, 3)


def test_missing_things_are_explained(tmp_path):
    with pytest.raises(SourceError, match="no such"):
        open_source(tmp_path / "nope")
    with pytest.raises(SourceError, match="no images"):
        open_source(tmp_path)
    with pytest.raises(SourceError, match="camera 97"):
        open_source("camera:97")


def test_calibration_images_are_spread_over_a_folder_and_come_first(tmp_path):
    items = list(range(500))
    order = spread_first(items, 128)
    first = order[:128]
    assert sorted(order) == items and first == sorted(first) and order[128:] == sorted(order[128:])
    assert max(b - a for a, b in zip(first, first[1:])) <= 4 and first[0] <= 2 and first[-1] >= 496
    assert spread_first(items[:100], 128) == items[:100] and spread_first(items, 0) == items

    names = [f"n{i:08d}_{i}.png" for i in range(12)]  # sorted by class, as ImageNet folders are
    write_images(tmp_path, names)
    src = open_source(tmp_path, calibration=3)
    assert src.spread and [p.name for p in src.files[:3]] == [names[2], names[6], names[10]]
    assert [p.name for p in src.files[3:]] == [n for i, n in enumerate(names) if i not in (2, 6, 10)]
    limited = open_source(tmp_path, limit=6, calibration=3)  # the first 6 in name order, then spread
    assert [p.name for p in limited.files] == [names[i] for i in (1, 3, 5, 0, 2, 4)]
    assert not open_source(tmp_path, calibration=12).spread
