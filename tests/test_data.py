from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from xsearch.core.data import augment_batch, channels_last_tensor, load_dataset, split_for_search
from xsearch.core.errors import UserError
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
