"""Image-text retrieval with several captions per image, CLIP_benchmark protocol.

``image_to_text_R@k``: an image query is a hit when any of its captions is in its top ``k``
captions. ``text_to_image_R@k``: a caption query is a hit when its image is in its top ``k``
images. Ties count against the query (see :mod:`.ranking`); scoring runs in query blocks,
so 5,000 images × 25,000 captions never build the 125M-entry score matrix.

Identical caption texts on different images (the same emoji drawn in two styles) have
identical embeddings, so telling them apart is impossible and, with ties counted against the
query, would cap recall@1 below 1 for a perfect model. Given ``caption_text`` ids, rows with
the same text are one caption: each is a positive of all of their images, and every such
image counts any of them as its caption.

Examples:
    >>> images = torch.eye(2)                    # (I=2, D=2)
    >>> texts = torch.eye(2)[[0, 0, 1]]          # (T=3, D): captions 0, 1 of image 0; 2 of 1
    >>> retrieval_metrics(images, texts, caption_image=[0, 0, 1], ks=(1,))
    {'image_to_text_R@1': 1.0, 'text_to_image_R@1': 1.0}
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .ranking import DEFAULT_MAX_BLOCK_ELEMENTS, negatives_outranking, pad_positives, recall_at

RECALL_KS = (1, 5, 10)


def group_captions(image_keys: Sequence[str]) -> tuple[list[str], list[int]]:
    """Rows sharing an image key are one image with several captions.

    Args:
        image_keys: the image key (e.g. CSV ``filepath``) of each caption row.

    Returns:
        ``(unique keys in first-seen order, image index of each caption)``.
    """
    index_of: dict[str, int] = {}
    caption_image = [index_of.setdefault(key, len(index_of)) for key in image_keys]
    return list(index_of), caption_image


def text_ids(captions: Sequence[str]) -> list[int]:
    """One id per caption; identical strings share it."""
    index_of: dict[str, int] = {}
    return [index_of.setdefault(text, len(index_of)) for text in captions]


def retrieval_metrics(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    caption_image: Sequence[int] | torch.Tensor,
    ks: Sequence[int] = RECALL_KS,
    max_block_elements: int = DEFAULT_MAX_BLOCK_ELEMENTS,
    caption_text: Sequence[int] | None = None,
) -> dict[str, float]:
    """Recall@k both ways.

    Args:
        image_features: ``(I, D)`` image embeddings.
        text_features: ``(T, D)`` caption embeddings.
        caption_image: ``(T,)`` index of each caption's image; every image needs a caption.
        ks: the ``k`` of each reported recall.
        max_block_elements: bound on one block's score matrix (:mod:`.ranking`).
        caption_text: ``(T,)`` id of each caption's text (equal ids: identical texts), from
            :func:`text_ids`; ``None`` treats every row as a distinct caption.

    Returns:
        ``{"image_to_text_R@k": ..., "text_to_image_R@k": ...}`` for each ``k``.
    """
    caption_image = torch.as_tensor(caption_image, dtype=torch.long)
    num_images = image_features.shape[0]
    if caption_image.shape[0] != text_features.shape[0]:
        raise ValueError(
            f"{text_features.shape[0]} caption embeddings but caption_image has "
            f"{caption_image.shape[0]} entries; give each caption its image index"
        )
    captions_of: list[list[int]] = [[] for _ in range(num_images)]
    for caption, image in enumerate(caption_image.tolist()):
        if not 0 <= image < num_images:
            raise ValueError(f"caption {caption} points to image {image} of {num_images}")
        captions_of[image].append(caption)
    uncaptioned = [i for i, group in enumerate(captions_of) if not group]
    if uncaptioned:
        raise ValueError(
            f"{len(uncaptioned)} images have no caption (first: {uncaptioned[0]}); "
            "retrieval needs at least one caption per image"
        )
    images_of = [[image] for image in caption_image.tolist()]
    if caption_text is not None:
        rows_of_text: dict[int, list[int]] = {}
        for row, text in enumerate(caption_text):
            rows_of_text.setdefault(int(text), []).append(row)
        same = [rows_of_text[int(text)] for text in caption_text]  # rows sharing my text
        captions_of = [sorted({r for c in group for r in same[c]}) for group in captions_of]
        images_of = [sorted({int(caption_image[r]) for r in rows}) for rows in same]
    image_counts = negatives_outranking(
        image_features, text_features, pad_positives(captions_of), max_block_elements
    )
    text_counts = negatives_outranking(
        text_features, image_features, pad_positives(images_of), max_block_elements
    )
    metrics = {f"image_to_text_R@{k}": r for k, r in recall_at(image_counts, ks).items()}
    metrics.update({f"text_to_image_R@{k}": r for k, r in recall_at(text_counts, ks).items()})
    return metrics
