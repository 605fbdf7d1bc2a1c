"""Retrieval recall@k on hand-made embeddings with several captions per image."""

import pytest
import torch
import torch.nn.functional as F

from clip_ping.evaluation.retrieval import group_captions, retrieval_metrics, text_ids


def test_group_captions_by_image_key():
    keys, caption_image = group_captions(["b.png", "a.png", "b.png", "c.png", "a.png"])
    assert keys == ["b.png", "a.png", "c.png"]
    assert caption_image == [0, 1, 0, 2, 1]


def test_any_positive_caption_in_the_top_k_is_a_hit():
    # Image i points at axis i. Image 0 has two captions: one far off (axis 2), one close.
    images = torch.eye(3)
    texts = F.normalize(
        torch.tensor(
            [
                [0.0, 0.2, 1.0],  # caption 0, image 0: closest to image 2, not image 0
                [1.0, 0.1, 0.0],  # caption 1, image 0
                [0.0, 1.0, 0.0],  # caption 2, image 1
                [0.0, 0.9, 0.2],  # caption 3, image 2: closest to image 1
            ]
        ),
        dim=-1,
    )
    caption_image = [0, 0, 1, 2]
    m = retrieval_metrics(images, texts, caption_image, ks=(1, 2, 3))
    # image → text: image 0's best caption is caption 1 (rank 1) ✓; image 1 → caption 2 ✓;
    # image 2's only caption (3) ranks below caption 0 (score 0.98 vs 0.22): rank 2.
    assert m["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert m["image_to_text_R@2"] == 1.0
    # text → image: captions 1 and 2 rank their image first; caption 0 ranks image 0 last
    # (score 0 vs 0.98 and 0.2), caption 3 ranks image 2 second.
    assert m["text_to_image_R@1"] == pytest.approx(2 / 4)
    assert m["text_to_image_R@2"] == pytest.approx(3 / 4)
    assert m["text_to_image_R@3"] == 1.0
    assert set(m) == {f"{d}_R@{k}" for d in ("image_to_text", "text_to_image") for k in (1, 2, 3)}


def test_ties_count_against_the_query():
    # Two identical images, each with one identical caption: every query ties with a negative.
    images = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    m = retrieval_metrics(images, texts, [0, 1], ks=(1, 2))
    assert m["image_to_text_R@1"] == m["text_to_image_R@1"] == 0.0
    assert m["image_to_text_R@2"] == m["text_to_image_R@2"] == 1.0
    # Two identical captions of the *same* image: the tie is between positives, so no penalty.
    m = retrieval_metrics(torch.eye(2), torch.eye(2)[[0, 0, 1]], [0, 0, 1], ks=(1,))
    assert m == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}


def test_blocked_equals_unblocked_with_five_captions_per_image():
    gen = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(40, 16, generator=gen), dim=-1)
    caption_image = torch.arange(40).repeat_interleave(5)
    texts = F.normalize(images[caption_image] + 0.8 * torch.randn(200, 16, generator=gen), dim=-1)
    unblocked = retrieval_metrics(images, texts, caption_image, max_block_elements=10**9)
    for block in (1, 199, 1000):  # 1 query per block; 199 < one image row; several rows
        assert (
            retrieval_metrics(images, texts, caption_image, max_block_elements=block) == unblocked
        )
    assert 0.0 < unblocked["image_to_text_R@1"] < unblocked["image_to_text_R@10"] <= 1.0


def test_uncaptioned_image_is_an_error():
    with pytest.raises(ValueError, match="1 images have no caption"):
        retrieval_metrics(torch.eye(3), torch.eye(3)[:2], [0, 1])


def test_identical_captions_on_two_images_are_one_caption():
    """Two images share a caption text (one concept, two styles): a perfect model must score 1,
    which it cannot when the twin caption, tied with the own one, counts as a negative."""
    images = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # images 0 and 1 look alike
    texts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # rows 0 and 1: the same text
    captions = ["red heart", "red heart", "blue circle"]
    caption_image = [0, 1, 2]
    without = retrieval_metrics(images, texts, caption_image, ks=(1,))
    assert without["image_to_text_R@1"] < 1.0  # the twin ties with the own caption
    with_ids = retrieval_metrics(
        images, texts, caption_image, ks=(1,), caption_text=text_ids(captions)
    )
    assert with_ids == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}
    # A distinct text still needs its own image first.
    swapped = retrieval_metrics(
        images, texts[[2, 2, 0]], caption_image, ks=(1,), caption_text=text_ids(captions)
    )
    assert swapped["text_to_image_R@1"] == 0.0


def test_one_caption_per_image_matches_recall_worked_by_hand():
    """CLIP_benchmark's protocol on 4 images and their 4 captions, every rank worked out.

    Scores (rows: images, columns: captions; cosine of unit vectors in 2-D at angles):
    image angles 0°, 90°, 180°, 270°; caption angles 10°, 200°, 95°, 300°, where caption j
    belongs to image j. Image→text: image 0 (0°) ranks captions 10° (0), 300° (3), 95° (2),
    200° (1): its own first → hit@1. Image 1 (90°): 95° (2), 10° (0), 200° (1), 300° (3):
    its caption 1 is 3rd → hit@3 only. Image 2 (180°): 200° (1), 95° (2), ... → caption 2 is
    2nd → hit@2. Image 3 (270°): 300° (3) first → hit@1. So I→T R@1 = 2/4, R@2 = 3/4, R@3 = 1.
    Text→image: caption 0 (10°) → image 0 first; caption 1 (200°) ranks images 180° (20° off),
    270° (70°), 90° (110°): its image 1 is 3rd; caption 2 (95°) ranks 90°, then its image 2 at
    180°: 2nd; caption 3 (300°) → image 3 first.
    So T→I R@1 = 2/4 (captions 0 and 3), R@2 = 3/4 (+ caption 2), R@3 = 1.
    """
    import math

    def unit(degrees):
        return torch.tensor(
            [[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees]
        )

    images, texts = unit([0, 90, 180, 270]), unit([10, 200, 95, 300])
    m = retrieval_metrics(images, texts, caption_image=[0, 1, 2, 3], ks=(1, 2, 3))
    assert m == {
        "image_to_text_R@1": 0.5,
        "image_to_text_R@2": 0.75,
        "image_to_text_R@3": 1.0,
        "text_to_image_R@1": 0.5,
        "text_to_image_R@2": 0.75,
        "text_to_image_R@3": 1.0,
    }
