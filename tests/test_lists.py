"""List datasets: the real ImageNet-LT / Places-LT split lists, generated image layouts, bad lines."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from conftest import write_imagenet_lt

from tailshift.config import build_config
from tailshift.data.arrays import DataError
from tailshift.data.build import prepare_data
from tailshift.data.groups import class_groups
from tailshift.data.lists import ListOptions, count_order, read_coco_json, read_list_file
from tailshift.data.sources import load_dataset

#: the real split lists (no images), beside the repository: ../shared/data/lists
LISTS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lists"
needs_lists = pytest.mark.skipif(not (LISTS / "Places_LT_train.txt").is_file(),
                                 reason=f"the real split lists are not in {LISTS}")


@needs_lists
def test_places_lt_train_list_counts_and_groups():
    paths, labels, lines = read_list_file(LISTS / "Places_LT_train.txt", 365)
    counts = np.bincount(labels, minlength=365)
    assert len(paths) == 62_500 and len(counts) == 365 and counts.min() == 5 and counts.max() == 4980
    assert paths[0].startswith("train/") and lines[0] == 1
    groups = class_groups(counts, "count")
    assert [len(groups[g]) for g in ("many", "med", "few")] == [131, 163, 71]


@needs_lists
def test_places_lt_reindexed_by_descending_count():
    _, labels, _ = read_list_file(LISTS / "Places_LT_train.txt", 365)
    counts = np.bincount(labels, minlength=365)
    new_of_old = count_order(labels, 365)
    reindexed = np.bincount(new_of_old[labels], minlength=365)
    assert (np.diff(reindexed) <= 0).all() and sorted(reindexed) == sorted(counts)
    assert new_of_old[int(np.argmax(counts))] == 0 and reindexed[0] == 4980
    # by index ranges, the re-indexed classes fall in the same Many/Med/Few as by count
    sizes = [len(g) for g in class_groups(reindexed, "index", (131, 294)).values()]
    assert sizes == [131, 163, 71]
    assert [set(g) for g in class_groups(reindexed, "index", (131, 294)).values()] == \
        [set(g) for g in class_groups(reindexed, "count").values()]


@needs_lists
@pytest.mark.parametrize("name, lines, classes, per_class, prefix", [
    ("ImageNet_LT_test.txt", 50_000, 1000, 50, "val/n01440764/ILSVRC2012_val_"),
    ("Places_LT_test.txt", 36_500, 365, 100, "val/airfield/Places365_val_"),
])
def test_real_test_lists_are_balanced(name, lines, classes, per_class, prefix):
    paths, labels, _ = read_list_file(LISTS / name, classes)
    assert len(paths) == lines and paths[0].startswith(prefix)
    assert (np.bincount(labels, minlength=classes) == per_class).all()


def test_imagenet_lt_layout_reads_and_reindexes(tmp_path):
    root = write_imagenet_lt(tmp_path, counts=(3, 9, 5), test_per_class=2)
    split = load_dataset("imagenet-lt", str(root))
    assert split.train.num_classes == 3 and len(split.train) == 17 and len(split.test) == 6
    assert Path(split.train.path(0)).is_file() and split.train.paths.dtype.kind == "S"
    counted = load_dataset("imagenet-lt", str(root), lists=ListOptions(class_order="count"))
    assert np.bincount(counted.train.labels)[:3].tolist() == [9, 5, 3]
    # the same image keeps the same (re-indexed) label in both splits
    assert counted.test.labels.tolist() == [2, 2, 0, 0, 1, 1]
    assert counted.train.path(3) == split.train.path(3)


def test_prepared_list_dataset_has_the_crop_shape_and_index_groups(tmp_path):
    root = write_imagenet_lt(tmp_path, counts=(3, 9, 5), test_per_class=2)
    cfg = build_config({"data": {"dataset": "imagenet-lt", "root": str(root), "class_order": "count",
                                 "longtail": {"profile": "none"}, "crop_size": 32, "resize_size": 36,
                                 "group_bounds": [1, 2]}})
    data = prepare_data(cfg.data)
    assert data.image_shape == (3, 32, 32) and data.num_classes == 3
    assert data.class_counts.tolist() == [9, 5, 3] and [g.tolist() for g in data.groups.values()] == [[0], [1], [2]]


def test_a_link_out_of_the_root_is_refused_unless_allowed(tmp_path):
    root = write_imagenet_lt(tmp_path / "imagenet", counts=(3, 2), test_per_class=1)
    elsewhere = tmp_path / "elsewhere"
    (root / "train" / "n00000001").rename(elsewhere)
    (root / "train" / "n00000001").symlink_to(elsewhere)  # a linked class folder
    with pytest.raises(DataError, match=r"ImageNet_LT_train.txt:4: image .* resolves to .*elsewhere.*outside the data "
                                        r"root.*allow_outside_root=true"):
        load_dataset("imagenet-lt", str(root))
    assert len(load_dataset("imagenet-lt", str(root), allow_outside_root=True).train) == 5


def write_list(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("line, message", [
    ("../outside.jpg 0", "not inside the image root"),
    ("/etc/passwd 0", "not inside the image root"),
    ("train/a.jpg 1000", "label 1000 is out of range (0..999)"),
    ("train/a.jpg -1", "label -1 is out of range"),
    ("train/a.jpg cat", "label 'cat' is not an integer"),
    ("train/a.jpg", "expected 'relative/path label'"),
])
def test_bad_list_lines_name_the_file_and_line(tmp_path, line, message):
    path = write_list(tmp_path / "list.txt", ["train/ok.jpg 0", "", line])
    with pytest.raises(DataError, match=re.escape(message)) as err:
        read_list_file(path, 1000)
    assert f"{path}:3:" in str(err.value) and "\n" not in str(err.value)


def test_a_bom_at_the_start_of_a_list_file_is_dropped(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes("\ufefftrain/a.jpg 0\ntrain/b.jpg 1\n".encode("utf-8"))
    paths, labels, _ = read_list_file(path)
    assert paths == ["train/a.jpg", "train/b.jpg"] and labels.tolist() == [0, 1]


def test_missing_image_names_the_list_line(tmp_path):
    root = write_imagenet_lt(tmp_path, counts=(3, 2), test_per_class=1)
    lines = (root / "ImageNet_LT_train.txt").read_text().splitlines()
    (root / lines[3].split()[0]).unlink()
    with pytest.raises(DataError, match=r"ImageNet_LT_train.txt:4: image 'train/n00000001/n00000001_0.JPEG' not found"):
        load_dataset("imagenet-lt", str(root))


def test_list_options_only_for_list_datasets_and_filelist_needs_its_lists(tmp_path):
    with pytest.raises(DataError, match="apply to the list datasets"):
        load_dataset("npz", str(tmp_path / "x.npz"), lists=ListOptions(class_order="count"))
    with pytest.raises(DataError, match="needs data.train_list"):
        load_dataset("filelist", str(tmp_path))
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset("places-lt", None)
    root = write_imagenet_lt(tmp_path, counts=(3, 2), test_per_class=1)
    split = load_dataset("filelist", str(root), lists=ListOptions(str(root / "ImageNet_LT_train.txt"),
                                                            str(root / "ImageNet_LT_test.txt")))
    assert split.train.num_classes == 2 and len(split.train) == 5


def test_an_image_folder_is_read_as_files_of_any_size_with_its_folder_names(tmp_path):
    root = write_imagenet_lt(tmp_path, counts=(3, 9, 5), test_per_class=2)  # two image sizes, test in val/
    (root / "train" / ".cache").mkdir()  # hidden folders and files are not classes or images
    (root / "train" / "n00000000" / "notes.txt").write_text("not an image")
    split = load_dataset("imagefolder", str(root))
    assert split.train.class_names == ("n00000000", "n00000001", "n00000002") and split.train.num_classes == 3
    assert np.bincount(split.train.labels).tolist() == [3, 9, 5] and split.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert split.train.paths[0] == b"train/n00000000/n00000000_0.JPEG" and Path(split.test.path(0)).is_file()
    assert split.source == f"{root} (class folders)"
    counted = load_dataset("imagefolder", str(root), lists=ListOptions(class_order="count"))
    assert counted.train.class_names == ("n00000001", "n00000002", "n00000000")
    cfg = build_config({"data": {"dataset": "imagefolder", "root": str(root), "longtail": {"profile": "none"},
                                 "groups": "count", "augment": "resized_crop", "crop_size": 32, "resize_size": 36}})
    assert prepare_data(cfg.data).image_shape == (3, 32, 32)


def test_an_image_folder_takes_its_class_names_from_a_names_file_matched_by_folder(tmp_path):
    root = write_imagenet_lt(tmp_path, counts=(3, 2), test_per_class=1)
    names = tmp_path / "names.txt"
    names.write_text("n00000001 goldfish, Carassius auratus\nn00000000 tench, Tinca tinca\n")
    split = load_dataset("imagefolder", str(root), lists=ListOptions(class_names=str(names)))
    assert split.train.class_names == ("tench", "goldfish")
    names.write_text("n00000000 tench\n")
    with pytest.raises(DataError, match=r"names.txt has no line for class 1 \(training folder 'n00000001'\)$"):
        load_dataset("imagefolder", str(root), lists=ListOptions(class_names=str(names)))


def test_a_bad_image_folder_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"^dataset 'imagefolder' needs data.root=PATH, a folder with train/ and test/"):
        load_dataset("imagefolder", None)
    with pytest.raises(DataError, match=r"needs train/ and test/ \(or val/\) folders with one sub-folder of images"):
        load_dataset("imagefolder", str(tmp_path))
    (tmp_path / "train").mkdir(), (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"train holds 0 class folders; 1 to \d+ are allowed$"):
        load_dataset("imagefolder", str(tmp_path))
    root = write_imagenet_lt(tmp_path / "a", counts=(3, 2), test_per_class=1)
    with pytest.raises(DataError, match=r"^dataset 'imagefolder' reads data.root's class folders; data.train_list is "
                                        r"for data.dataset=filelist$"):
        load_dataset("imagefolder", str(root), lists=ListOptions(str(root / "ImageNet_LT_train.txt")))
    (root / "val" / "n00000002").mkdir()
    with pytest.raises(DataError, match=r"val class folders \['n00000000', 'n00000001', 'n00000002'\] differ from "
                                        r".*train's \['n00000000', 'n00000001'\]"):
        load_dataset("imagefolder", str(root))
    (root / "train" / "n00000002").mkdir()
    with pytest.raises(DataError, match=r"class folder .*train/n00000002 holds no .png/.jpg/.jpeg/.bmp image"):
        load_dataset("imagefolder", str(root))
    (root / "train" / "n00000002" / "broken.png").write_bytes(b"not a png")
    Image.new("RGB", (8, 8)).save(root / "val" / "n00000002" / "x.png")
    with pytest.raises(DataError, match=r"^.*a: image 'train/n00000002/broken.png' is not a readable image"):
        load_dataset("imagefolder", str(root))


def inat_json(path: Path, images: list[tuple[int, str]], annotations: list[tuple[int, int]], categories) -> Path:
    path.write_text(json.dumps({
        "images": [{"id": i, "file_name": f, "width": 8, "height": 8} for i, f in images],
        "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(annotations)],
        "categories": [{"id": c, "name": f"species {c}"} for c in categories],
    }))
    return path


def test_inaturalist_json_labels_follow_category_ids(tmp_path):
    images = [(10, "train_val2018/Plantae/9/a.jpg"), (11, "train_val2018/Aves/2/b.jpg"),
              (12, "train_val2018/Aves/2/c.jpg"), (13, "train_val2018/Insecta/5/d.jpg")]
    train = inat_json(tmp_path / "train2018.json", images, [(10, 9), (11, 2), (12, 2), (13, 5)], [9, 2, 5])
    paths, labels, numbers, categories, names = read_coco_json(train)
    assert categories == [2, 5, 9] and labels.tolist() == [2, 0, 0, 1] and names[0] == "species 2"
    test = inat_json(tmp_path / "val2018.json", images[:1], [(10, 7)], [7])
    with pytest.raises(DataError, match=r"val2018.json: annotations\[0\]: category_id 7 is out of range"):
        read_coco_json(test, categories)
    for _, file in images:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / file)
    inat_json(tmp_path / "train2018.json", images, [(10, 9), (11, 5), (12, 5), (13, 2)], [9, 2, 5])
    inat_json(tmp_path / "val2018.json", images[3:], [(13, 2)], [2, 5, 9])
    split = load_dataset("inat2018", str(tmp_path), lists=ListOptions(class_order="count"))
    assert split.train.num_classes == 3 and split.train.labels.tolist() == [2, 0, 0, 1]
    assert split.train.class_names == ("species 5", "species 2", "species 9")
    assert split.test.labels.tolist() == [1]
    bad = inat_json(tmp_path / "bad.json", [(1, "../x.jpg")], [(1, 2)], [2])
    with pytest.raises(DataError, match=r"bad.json: annotations\[0\]: path '../x.jpg' is not inside"):
        read_coco_json(bad)


def test_16_bit_list_images_are_named_in_the_caveat_and_decoded_scaled(tmp_path):
    from tailshift.data.host_loader import FileImages

    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 63).astype(np.uint16)  # 0 .. 64,449
    lines = []
    for i in range(4):
        Image.fromarray(ramp).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png {i % 2}")
    write_list(tmp_path / "list.txt", lines)
    split = load_dataset("filelist", str(tmp_path), lists=ListOptions(str(tmp_path / "list.txt"),
                                                                      str(tmp_path / "list.txt")))
    assert split.caveat == "8 images of mode I;16 scaled from 0..65535 to 8 bits"  # 4 in each split
    decoded = FileImages(split.train, "none", 32, 32, 0.0).image(0, None)[0]
    assert decoded.shape == (3, 32, 32) and (decoded == 255).mean() < 0.01
    assert np.abs(decoded[0].astype(int) - np.rint(ramp / 257.0)).max() <= 1
