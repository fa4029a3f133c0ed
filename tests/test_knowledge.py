"""Knowledge-enhanced text input (model.knowledge, issue #23): the parsed findings beside the frozen features."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.head import RetrievalHead
from model.knowledge import KNOWLEDGE_DIM, NAMES, PER_FINDING, knowledge_vectors, text_inputs, with_knowledge
from model.training import train_head
from pipeline.options import parse_training_args


def _slot(vector: np.ndarray, name: str) -> list[float]:
    at = PER_FINDING * NAMES.index(name)
    return vector[at:at + PER_FINDING].tolist()  # present, left, right, negated


def test_vectors_carry_finding_side_and_negation_from_the_text():
    left, right, both, no, normal = knowledge_vectors(
        ["small left pleural effusion", "Right-sided effusion.", "bilateral pleural effusions",
         "no pleural effusion", "normal chest radiograph"], scale=1.0)
    assert _slot(left, "pleural effusion") == [1.0, 1.0, 0.0, 0.0]
    assert _slot(right, "pleural effusion") == [1.0, 0.0, 1.0, 0.0]
    assert _slot(both, "pleural effusion") == [1.0, 1.0, 1.0, 0.0]
    assert _slot(no, "pleural effusion") == [0.0, 0.0, 0.0, 1.0]
    assert normal[-1] == 1.0 and normal[:-1].sum() == 0.0
    assert left.sum() == 2.0  # nothing else is claimed
    # a real IU sentence with negation and a bilateral finding in one clause
    v = knowledge_vectors(["No cardiomegaly with bilateral small pleural effusions."], scale=1.0)[0]
    assert _slot(v, "cardiomegaly") == [0.0, 0.0, 0.0, 1.0]
    assert _slot(v, "pleural effusion") == [1.0, 1.0, 1.0, 0.0]
    assert knowledge_vectors(["left effusion"], scale=2.0).max() == 2.0


def test_text_inputs_is_the_identity_for_a_head_without_knowledge():
    feats = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    plain = RetrievalHead(4, 6, embed_dim=8, hidden_dim=16)
    assert text_inputs(plain, feats, None) is feats
    head = RetrievalHead(4, 6, embed_dim=8, hidden_dim=16, knowledge_dim=KNOWLEDGE_DIM, knowledge_scale=2.0)
    x = text_inputs(head, feats, ["left effusion", "right effusion", ""])
    assert x.shape == (3, 6 + KNOWLEDGE_DIM) and head.text_input_dim == x.shape[1]
    assert np.array_equal(x[:, :6], feats) and not np.array_equal(x[0, 6:], x[1, 6:]) and x[2, 6:].sum() == 0
    t = text_inputs(head, torch.from_numpy(feats), ["a", "b", "c"])
    assert isinstance(t, torch.Tensor) and t.shape == x.shape
    with pytest.raises(ValueError, match="texts must be given"):
        text_inputs(head, feats, None)
    assert RetrievalHead(**head.config).text_input_dim == head.text_input_dim  # rebuilt from its config


def test_knowledge_input_lets_the_head_tell_sides_the_frozen_features_cannot():
    """Toy: the frozen text features of "left X" and "right X" are IDENTICAL (the extreme of the
    text tower's cosine 0.975); images show the side plainly. Only the parsed side can separate
    them: with --knowledge the head ranks the right-side image first for most phrases; without, it
    is a coin toss."""
    rng = np.random.default_rng(0)
    n, names = 240, ["pleural effusion", "pneumothorax", "atelectasis", "opacity"]
    finding = rng.integers(0, len(names), n)
    side = rng.choice(["left", "right"], n)
    centres = rng.standard_normal((len(names), 16))
    image = np.concatenate([centres[finding] + 0.1 * rng.standard_normal((n, 16)),
                            np.where(side == "left", 1.0, -1.0)[:, None] * np.ones((n, 4))], axis=1).astype(np.float32)
    frozen = (centres[finding] + 0.1 * rng.standard_normal((n, 16))).astype(np.float32)  # no side in it
    texts = [f"{s} {names[f]}" for f, s in zip(finding, side)]
    rows = {"train": np.arange(0, 160), "val": np.arange(160, 200), "test": np.arange(200, n)}
    labels = np.ones(n, dtype=np.int64)

    def side_accuracy(scale: float) -> float:
        args = parse_training_args(["--quiet", "--loss", "clip", "--supcon-labels", "binary", "--val-metric", "r10p10",
                                    "--epochs", "30", "--patience", "30", "--batch-size", "32", "--embed-dim", "16",
                                    "--hidden-dim", "32", "--w-side", "0", "--w-phrase", "0", "--knowledge", str(scale)])
        torch.manual_seed(0)
        trained = train_head(args, image.shape[1], frozen.shape[1], torch.from_numpy(image),
                             torch.from_numpy(with_knowledge(frozen, texts, scale)), torch.ones(n), rows, labels)
        test = rows["test"]
        with torch.no_grad():
            zi = trained.head.encode_image(torch.from_numpy(image[test]))
            queries = [f"{s} {names[f]}" for f, s in zip(finding[test], side[test])]
            zt = trained.head.encode_text(torch.as_tensor(text_inputs(trained.head, frozen[test], queries)))
        top = (zt @ zi.T).argmax(dim=1).numpy()
        return float((side[test][top] == side[test]).mean())

    with_k, without = side_accuracy(2.0), side_accuracy(0.0)
    assert with_k >= 0.9 and without <= 0.7, (with_k, without)


def test_training_refuses_frozen_only_inputs_for_a_knowledge_head():
    args = parse_training_args(["--quiet", "--knowledge", "2", "--w-side", "0", "--w-phrase", "0",
                                "--supcon-labels", "binary", "--val-metric", "r10p10"])
    x = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="text inputs"):
        train_head(args, 3, 3, x, x, torch.zeros(4), {"train": np.arange(4), "val": np.arange(4)}, np.zeros(4, int))


def test_a_saved_knowledge_head_embeds_queries_and_reports_alike(tmp_path):
    """Saved and loaded through the checkpoint, a knowledge head gives a typed query (the app's path,
    texts -> vectors) the same vector as the index builder's path (cached features + their texts);
    the builder's path without the texts is refused, never silently fed the frozen part alone."""
    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.retrieval_model import RetrievalModel
    from tests.test_checkpoint import TinyBackbone

    torch.manual_seed(0)
    backbone = TinyBackbone()
    head = RetrievalHead(backbone.image_dim, backbone.text_dim, embed_dim=8, hidden_dim=16,
                         knowledge_dim=KNOWLEDGE_DIM, knowledge_scale=2.0)
    save_checkpoint(tmp_path, head, {"backbone_id": backbone.backbone_id, "backbone_name": "tiny"})
    loaded, config = load_checkpoint(tmp_path, expected_backbone_id=backbone.backbone_id)
    assert loaded.text_input_dim == backbone.text_dim + KNOWLEDGE_DIM
    model = RetrievalModel(backbone, loaded, config)
    texts = ["small left pleural effusion", "small right pleural effusion", "no pleural effusion"]
    query = model.embed_texts(texts)
    single = np.concatenate([model.embed_texts([t]) for t in texts])  # the LRU-cached one-query path
    built = model.project_text_features(backbone.encode_texts(texts).numpy(), texts)
    assert np.allclose(query, built, atol=1e-6) and np.allclose(single, built, atol=1e-6)
    with pytest.raises(ValueError, match="texts must be given"):
        model.project_text_features(backbone.encode_texts(texts).numpy())
