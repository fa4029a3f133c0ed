"""The build pipeline's own contracts (pipeline.steps, pipeline.demo): a demo run names its studies
by its recorded options, the maps step redraws a run's maps from the shared feature cache, and the
first start trains and indexes through one call, with one backbone for the whole run.

One 40-study first start serves every test here (it was three trainings: the first start, `train.py --index`
and a run for the maps; `pipeline.demo.ensure_demo` runs `train.py`'s own steps, ``train_run`` with ``--index``)."""
from __future__ import annotations

import json

import pytest

from pipeline.steps import maps_for_run, run_collection


@pytest.fixture(scope="module")
def first_start(tmp_path_factory, demo_built):
    """The app's first start on a 40-study demo (``ensure_demo``: train with ``--index``, no maps), counting the
    backbones it creates; (run, index, what ensure_demo returned, the names of the backbones created)."""
    import model.factory
    import pipeline.steps
    from pipeline.demo import ensure_demo

    folder = tmp_path_factory.mktemp("pipeline")
    run, index = folder / "run", folder / "index"
    real, created = model.factory.create_backbone, []

    def counting(*args, **kwargs):
        created.append(args[0] if args else kwargs.get("name"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model.factory, "create_backbone", counting)
        patch.setattr(pipeline.steps, "create_backbone", counting)
        got = ensure_demo(run, index, train_args=["--demo-limit", "40", "--epochs", "2", "--bootstrap", "0",
                                                  "--no-maps", "--quiet"])
    return run, index, got, created


@pytest.fixture(scope="module")
def demo_run(first_start):
    return first_start[0]


def test_a_demo_run_names_its_studies_by_its_recorded_options(demo_run):
    config = json.loads((demo_run / "config.json").read_text())
    assert config["data"] == "demo40" and config["args"]["demo_limit"] == 40 and config["args"]["demo_seed"] == 0
    assert not set(config) & set(config["args"]) and "optim" not in config  # each option once
    studies, root = run_collection(demo_run)
    assert len(studies) == 40 and all(s.image_path.startswith(str(root)) for s in studies)
    split = json.loads((demo_run / "split.json").read_text())
    assert {s.study_id for s in studies} == {i for part in split.values() for i in part}  # the studies it trained on
    assert [s.study_id for s in run_collection(demo_run)[0]] == [s.study_id for s in studies]  # in the same order


def test_the_maps_step_redraws_a_run_without_maps_from_the_feature_cache(demo_run):
    assert not (demo_run / "embedding_map.json").exists()
    path = maps_for_run(demo_run)
    maps = json.loads(path.read_text())
    studies, _ = run_collection(demo_run)
    assert maps["ids"] == [s.study_id for s in studies] and maps["labels"] == [s.label for s in studies]
    assert set(maps["maps"]) == {"frozen", "finetuned"}


def test_a_run_on_other_data_must_be_given_its_data(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"data": "manifest", "args": {}}))
    with pytest.raises(ValueError, match="python -m index build"):
        run_collection(tmp_path)


def test_the_first_start_trains_and_indexes_in_one_pass(first_start):
    from index.manifest import FAMILIARITY, read_manifest
    from pipeline.demo import ensure_demo

    run, index, got, _ = first_start
    assert got == (run, index)
    manifest = read_manifest(index)
    assert manifest.count == 40 and manifest.run_dir == str(run.absolute())
    assert {FAMILIARITY, "frozen_images.npy"} <= set(manifest.files)
    before = (index / "manifest.json").stat().st_mtime_ns
    ensure_demo(run, index)  # built: nothing to do
    assert (index / "manifest.json").stat().st_mtime_ns == before


def test_train_with_index_reuses_the_loaded_backbone(first_start):
    """`train.py --index` (``train_run``, what the first start runs) indexes with the backbone it trained on (so
    `--backbone-path` weights are used again, not looked up on the hub): one backbone is created for the whole run."""
    from index.manifest import read_manifest

    _, index, _, created = first_start
    assert created == ["offline"] and read_manifest(index).count == 40


@pytest.mark.parametrize("name, backbone_id, outdated", [
    ("offline", "offline:efficientnet_lite0-imagenet-grid2x2+all-MiniLM-L6-v2", True),  # the former pooling
    ("offline", None, True),
    ("clip", "open_clip:ViT-B-16/openai", False),  # another backbone's run is the user's choice
])
def test_a_demo_run_of_another_offline_tower_is_retrained(tmp_path, name, backbone_id, outdated):
    """A head trained on the former offline features would be refused by the checkpoint loader: the demo
    is retrained (and re-indexed) instead; one trained on this code's tower is kept."""
    from model.offline_tower import OFFLINE_BACKBONE_ID
    from pipeline.demo import outdated_demo_run

    (tmp_path / "config.json").write_text(json.dumps({"backbone_name": name, "backbone_id": backbone_id}))
    assert outdated_demo_run(tmp_path) is outdated
    (tmp_path / "config.json").write_text(json.dumps({"backbone_name": "offline", "backbone_id": OFFLINE_BACKBONE_ID}))
    assert outdated_demo_run(tmp_path) is False
    (tmp_path / "config.json").write_text("{not json")
    assert outdated_demo_run(tmp_path) is False  # the loader reports a damaged run


def test_a_demo_run_whose_knowledge_input_an_older_parser_read_is_retrained(tmp_path):
    """A head with the knowledge input (model.knowledge) learned from its reports' parsed findings: when the phrase
    parser has changed since (data.findings_text.PARSER_VERSION), the demo is retrained so queries and reports are
    read alike; a head without that input, or one read by this parser, is kept."""
    from data.findings_text import PARSER_VERSION
    from model.offline_tower import OFFLINE_BACKBONE_ID
    from pipeline.demo import outdated_demo_run

    def config(head: dict, versions: dict) -> bool:
        (tmp_path / "config.json").write_text(json.dumps({"backbone_name": "offline", "backbone_id": OFFLINE_BACKBONE_ID,
                                                          "head": head, "versions": versions}))
        return outdated_demo_run(tmp_path)

    assert config({"knowledge_dim": 125}, {}) is True  # written before the parser had a version
    assert config({"knowledge_dim": 125}, {"phrase_parser": PARSER_VERSION - 1}) is True
    assert config({"knowledge_dim": 125}, {"phrase_parser": PARSER_VERSION}) is False
    assert config({}, {}) is False  # the paper's recipe: no parsed input
