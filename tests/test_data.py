from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from xsearch.core.data import augment_batch, channels_last_tensor, split_for_search
from xsearch.core.errors import UserError
from xsearch.datasets import load_dataset
from xsearch.supernets import Supernet


def test_fashion_mnist_is_the_real_thing(fashion_root):
    data = load_dataset("fashion_mnist", root=str(fashion_root))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (60000, 10000, 10, (1, 28, 28))
    assert torch.bincount(data.train.targets).tolist() == [6000] * 10
    x, _ = next(data.batches("train", batch_size=256))
    assert x.shape == (256, 1, 28, 28) and abs(float(x.mean())) < 0.3 and 0.7 < float(x.std()) < 1.3


def test_one_channel_batches_and_models_run_channels_last(fashion_root):
    """Fashion-MNIST has one channel: its batches and the stem's weight must still carry NHWC
    strides, or every convolution after them runs in NCHW (``contiguous(channels_last)`` leaves
    such tensors with their NCHW strides)."""
    from xsearch.core.training import channels_last
    from xsearch.search_spaces import get_space

    data = load_dataset("fashion_mnist", root=str(fashion_root))
    x, _ = next(data.batches("train", batch_size=8))
    assert x.stride() == (784, 1, 28, 1)
    seen = []
    net = channels_last(Supernet(get_space("mbv3")))
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: seen.append(o.stride(1) == 1 and o.shape[1] > 1))
    net(x)
    assert seen and all(seen)
    t = torch.randn(2, 3, 5, 5)
    cl = channels_last_tensor(t)
    assert torch.equal(cl, t) and cl.stride() == (75, 1, 15, 3) and channels_last_tensor(cl) is cl


def test_search_split_is_stratified_disjoint_and_never_touches_test(fashion_root):
    data = load_dataset("fashion_mnist", root=str(fashion_root))
    w, a = split_for_search(data.train.targets, 2000, seed=0)
    assert len(w) == len(a) == 1000 and not set(w.tolist()) & set(a.tolist())
    assert torch.bincount(data.train.targets[w], minlength=10).tolist() == [100] * 10
    assert int(torch.cat([w, a]).max()) < len(data.train)


def test_cifar_pickle_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 3)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(range(n))}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    data = load_dataset("cifar10", root=str(tmp_path))
    assert (len(data.train), len(data.test), data.num_classes, data.input_shape) == (20, 3, 10, (3, 32, 32))
    with open(folder / "test_batch", "rb") as f:
        raw = pickle.load(f)["data"][1].reshape(3, 32, 32)
    assert torch.equal(data.test.images[1], torch.from_numpy(raw))


def test_imagefolder_layout(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 30), (i * 100, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    data = load_dataset("imagefolder", root=str(tmp_path), image_size=16)
    assert data.class_names == ("cat", "dog") and data.input_shape == (3, 16, 16)
    x, y = next(data.batches("test", batch_size=8))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [0, 0, 1, 1]


def test_augmentation_only_shifts_and_flips():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    out = augment_batch(x, padding=0, flip=True, generator=g)
    for i in range(2):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(2))
    shifted = augment_batch(x, padding=1, flip=False, generator=g)
    assert shifted.shape == x.shape
    assert set(shifted.unique().tolist()) <= set(x.unique().tolist()) | {0.0}


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(UserError, match="fashion_mnist"):
        load_dataset("mnistt")


# --- folder data: worker processes, cache, same batches ------------------------------------

def _digits_folder(root, per_class_train: int = 7, per_class_val: int = 3):
    """An ImageFolder of scikit-learn digits as 8x8 grayscale PNGs; returns {(split, class, i): uint8 pixels}."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = (d.images * 255.0 / 16.0).round().astype(np.uint8)
    written = {}
    for c in range(10):
        rows = np.flatnonzero(d.target == c)
        for split, take in (("train", rows[:per_class_train]), ("val", rows[per_class_train:][:per_class_val])):
            (root / split / f"digit{c}").mkdir(parents=True, exist_ok=True)
            for i, row in enumerate(take):
                Image.fromarray(pixels[row], mode="L").save(root / split / f"digit{c}" / f"{i:03d}.png")
                written[(split, c, i)] = pixels[row]
    return written


def _all_batches(data, split: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    return list(data.batches(split, batch_size=16, shuffle=True, augment=True, generator=g))


def test_folder_batches_are_identical_in_process_in_workers_and_cached(tmp_path):
    import multiprocessing

    written = _digits_folder(tmp_path)
    plain = load_dataset("imagefolder", root=str(tmp_path), image_size=8, workers=0, cache_mb=0)
    workers = load_dataset("imagefolder", root=str(tmp_path), image_size=8, workers=2, cache_mb=0)
    cached = load_dataset("imagefolder", root=str(tmp_path), image_size=8, workers=2, cache_mb=1)
    assert (plain.info["cached"], workers.info["cached"], cached.info["cached"]) == ([], [], ["train", "val"])
    assert type(cached.train).__name__ == "TensorSplit" and type(workers.train).__name__ == "FolderSplit"
    # an independent reference: the PNGs' pixels (grey -> RGB), normalised with the data's mean and std
    first = torch.from_numpy(written[("val", 0, 0)]).float().div(255.0)
    x, y = next(plain.batches("test", batch_size=4))
    expected = (first.expand(3, 8, 8) - torch.tensor(plain.mean).view(3, 1, 1)) / torch.tensor(plain.std).view(3, 1, 1)
    torch.testing.assert_close(x[0], expected, rtol=0, atol=1e-6)
    assert y.tolist() == [0, 0, 0, 1]
    for split in ("train", "test"):
        reference = _all_batches(plain, split, seed=3)
        assert len(reference) == (5 if split == "train" else 2)
        for other in (workers, cached):
            got = _all_batches(other, split, seed=3)
            assert len(got) == len(reference)
            for (xa, ya), (xb, yb) in zip(reference, got):
                assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # the worker path really decodes in other processes, and draws nothing from the global RNG (the
    # training's dropout and path sampling must see the same random numbers as with in-process decoding)
    before = torch.get_rng_state()
    iterator = workers.batches("train", batch_size=8)
    next(iterator)
    assert len(multiprocessing.active_children()) >= 1
    iterator.close()
    assert torch.equal(torch.get_rng_state(), before)


def test_folder_cache_budget_and_bad_settings(tmp_path):
    _digits_folder(tmp_path)
    per_image = 3 * 16 * 16
    val_only = (30 * per_image + 10) / 2 ** 20  # 70 train images do not fit, the 30 val images do
    data = load_dataset("imagefolder", root=str(tmp_path), image_size=16, workers=0, cache_mb=val_only)
    assert data.info["cached"] == ["val"] and data.input_shape == (3, 16, 16)
    with pytest.raises(UserError, match="data.workers"):
        load_dataset("imagefolder", root=str(tmp_path), workers=-1)
    with pytest.raises(UserError, match="data.cache_mb"):
        load_dataset("imagefolder", root=str(tmp_path), cache_mb=-5)
    (tmp_path / "val" / "digit9").rename(tmp_path / "val" / "nine")
    with pytest.raises(UserError, match="same class folders"):
        load_dataset("imagefolder", root=str(tmp_path))


def test_folder_settings_are_config_keys():
    from xsearch.config import settings

    assert {"workers": None, "cache_mb": 1024.0}.items() <= settings("data", "imagefolder").items()


def test_bench_data_rows(tmp_path, fashion_root):
    import json

    from xsearch.bench.data import bench_data

    out = tmp_path / "data.json"
    rows = bench_data(["images=40", "passes=1", "batch_size=16", f"fashion_root={fashion_root}", f"out={out}",
                       f"folder={tmp_path / 'pngs'}"])
    assert [r["way"] for r in rows] == ["in-process (old)", "1 worker", "2 workers", "cached"]
    assert all(r["images_per_second"] > 0 and r["train_images"] == 40 for r in rows)
    assert json.loads(out.read_text()) == rows
    assert len(list((tmp_path / "pngs" / "val").rglob("*.png"))) == 10


def test_xsearch_data_folder_writes_what_imagefolder_reads_pixel_for_pixel(tmp_path, capsys):
    from xsearch.cli import main

    out = tmp_path / "digits"
    assert main(["data", "folder", str(out), "dataset=digits", "train=200", "val=50"]) == 0
    assert "wrote digits" in capsys.readouterr().out
    digits = load_dataset("digits")
    folder = load_dataset("imagefolder", root=str(out), image_size=8, workers=0)
    assert abs(len(folder.train) - 200) <= 5 and abs(len(folder.test) - 50) <= 5  # class-stratified: about as asked
    assert folder.class_names == tuple(f"{c:02d}" for c in range(10))
    # every written image is one of the digits' test images, the same pixels (grayscale written, RGB read)
    x, y = folder.test.batch(torch.arange(len(folder.test)))
    originals = {tuple(digits.test.images[i, 0].flatten().tolist()): int(digits.test.targets[i])
                 for i in range(len(digits.test))}
    pixels = (x[:, 0] * 255).round().to(torch.uint8)
    assert all(originals.get(tuple(p.flatten().tolist())) == int(t) for p, t in zip(pixels, y))


@pytest.mark.parametrize("args, message", [
    (["dataset=nope"], "cannot be written as a folder; valid:"),
    (["train=0"], "train must be at least 1"),
    (["train=abc"], "train must be an integer"),
    (["colour=red"], "is not an option of xsearch data folder"),
])
def test_xsearch_data_folder_refuses_bad_input_with_exit_2(tmp_path, capsys, args, message):
    from xsearch.cli import main

    assert main(["data", "folder", str(tmp_path / "out"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_xsearch_data_folder_will_not_write_into_a_full_folder(tmp_path, capsys):
    from xsearch.cli import main

    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main(["data", "folder", str(tmp_path / "full"), "dataset=digits"]) == 2
    assert "is not an empty folder" in capsys.readouterr().err
