"""The budget presets (``xsearch/conf/budget/*.yaml``): which components' settings each one reaches."""

from __future__ import annotations

from xsearch.config import compose, group_options, load_budget, settings, validate

# budget=smoke's keys that size the downstream path, and the components that own them
DOWNSTREAM = {"space": ("dyhead",), "data": ("coco", "voc_seg"),
              "evaluator": ("detection", "segmentation", "keypoints", "semantic_segmentation")}
SECTION = {"space": "space", "data": "data", "evaluator": "train"}


def test_smoke_sizes_the_downstream_path_and_leaves_classification_alone():
    """``budget=smoke``'s downstream sizes reach the dyhead space, COCO and VOC data and the downstream evaluators only.

    Every other component either lacks the key or has the preset's value as its default (imagefolder's
    ``image_size``), and a classification run composes the same space, data and training settings at
    ``budget=smoke`` as before those keys existed, so its smoke numbers do not move when they do.
    """
    smoke = load_budget("smoke")
    downstream_train = set(smoke["train"]) - set(settings("evaluator", "classification"))
    keys = {"space": set(smoke["space"]), "data": set(smoke["data"]), "evaluator": downstream_train}
    assert {"image_size"} <= keys["data"] and {"channels"} <= keys["evaluator"]
    for group, owners in DOWNSTREAM.items():
        values = smoke[SECTION[group]]
        for key in keys[group]:
            assert all(key in settings(group, name) for name in owners), (group, key)
            for name in set(group_options(group)) - set(owners):
                assert settings(group, name).get(key, values[key]) == values[key], (group, name, key)
    spaces = [s for s in group_options("space") if s not in DOWNSTREAM["space"]]
    datas = [d for d in group_options("data") if d not in DOWNSTREAM["data"]]
    for space, data in [(space, "fashion_mnist") for space in spaces] + [("mbv3", data) for data in datas]:
        args = [f"space={space}", f"data={data}"]
        with_smoke, defaults = validate(compose([*args, "budget=smoke"])), validate(compose(args))
        for section in ("space", "data"):
            assert with_smoke[section] == defaults[section], (space, data, section)
        assert not downstream_train & set(with_smoke["train"]), (space, data)
