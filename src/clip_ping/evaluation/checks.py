"""Evaluation sets checked before they are used, so a broken set fails at once.

:func:`check_images` decodes every image of a file-backed set once (evaluation sets are small:
this costs about one evaluation's decoding) and applies ``--on-bad-sample`` as training does:
``skip`` leaves the bad images out, each logged with its path and reason, and stops past
``--max-bad-share``; ``error`` stops at the first, naming it. A row whose caption is missing
or blank makes its image bad too. :func:`check_task` checks that a set has what a task
needs (labels and class names for zero-shot, captions for retrieval), and
:func:`meaningless_score` says when a perfect score would mean nothing.

Examples:
    >>> from clip_ping.data.shapes import build_shapes
    >>> from clip_ping.evaluation.checks import check_images, check_task, meaningless_score
    >>> from clip_ping.evaluation.datasets import load_eval_dataset
    >>> _ = build_shapes("shapes", num_train=8, num_val=60, image_size=16)
    >>> data = load_eval_dataset("shapes/val.csv", lambda image: image)
    >>> data = check_images(data, "skip", 0.01)  # every image decodes: the same set
    >>> check_task(data, "retrieval"), meaningless_score(data, "retrieval")  # None: fine
    (None, None)
"""

from __future__ import annotations

import dataclasses
import logging

from ..data.bad_samples import BadSample, BadSampleLog, check_caption, check_policy, decode_image
from .datasets import EvalDataset, ImageFiles

log = logging.getLogger("clip_ping")


def check_images(data: EvalDataset, on_bad_sample: str, max_bad_share: float) -> EvalDataset:
    """``data`` with its bad images (and their captions) left out, or ``data`` itself when
    none is bad; :class:`BadSample` naming the first with ``on_bad_sample="error"``.
    Built-in sets (arrays in memory) are returned as they are."""
    check_policy(on_bad_sample, max_bad_share)
    images = data.images
    if not isinstance(images, ImageFiles):
        return data
    caption_bad: dict[int, str] = {}  # image → reason of its first bad caption row
    for caption, image in zip(data.captions or [], data.caption_image or [], strict=True):
        try:
            check_caption(caption)
        except BadSample as exc:
            caption_bad.setdefault(image, exc.reason)
    bad: dict[int, str] = {}
    for index, path in enumerate(images.paths):  # in file order: "error" names the first
        try:
            if index in caption_bad:
                raise BadSample(caption_bad[index])
            decode_image(path)
        except BadSample as exc:
            if on_bad_sample == "error":
                raise exc.at(f"image {path} listed in {images.source}") from None
            bad[index] = exc.reason
    if not bad:
        return data
    skipped = [(index, str(images.paths[index]), bad[index]) for index in sorted(bad)]
    BadSampleLog(len(images), max_bad_share, images.source, None).record(skipped)
    return drop_images(data, set(bad))


def drop_images(data: EvalDataset, drop: set[int]) -> EvalDataset:
    """``data`` without the images ``drop``, their labels and their caption rows."""
    assert isinstance(data.images, ImageFiles)
    keep = [index for index in range(len(data)) if index not in drop]
    new_index = {old: new for new, old in enumerate(keep)}
    source = data.images
    images = ImageFiles([source.paths[i] for i in keep], source.preprocess, source.source)
    labels = [data.labels[i] for i in keep] if data.labels is not None else None
    captions, caption_image = data.captions, data.caption_image
    if captions is not None and caption_image is not None:
        rows = [row for row, image in enumerate(caption_image) if image in new_index]
        captions = [captions[row] for row in rows]
        caption_image = [new_index[caption_image[row]] for row in rows]
    return dataclasses.replace(
        data, images=images, labels=labels, captions=captions, caption_image=caption_image
    )


def check_task(data: EvalDataset, task: str) -> None:
    """``ValueError`` / ``FileNotFoundError`` unless ``data`` has what ``task`` needs:
    labels within the class names (zero-shot), labels (linear probe), captions (retrieval)."""
    if task == "zeroshot":
        labels, classnames = data.require_labels("zero-shot"), data.require_classnames()
        outside = [label for label in labels if not 0 <= label < len(classnames)]
        if outside:
            raise ValueError(
                f"{data.name} has label {outside[0]} but {len(classnames)} class names "
                f"({data.classnames_hint}); the class-name file must list one name per label, "
                "in label order (--zeroshot-classnames / --classnames)"
            )
    elif task == "linear-probe":
        data.require_labels("linear probe")
    elif task == "retrieval":
        data.require_captions()


def meaningless_score(data: EvalDataset, task: str) -> str | None:
    """Why ``task`` on ``data`` would score alike whatever the model (perfectly, or for
    classes of one name not at all), or None."""
    if task in ("zeroshot", "linear-probe") and data.labels is not None:
        if len(set(data.labels)) < 2:
            return (
                f"{data.name} has a single class, so every image is classified right by any "
                f"model: its {task} accuracy means nothing. Evaluate on a set of several classes"
            )
    names = data.classnames or []
    if task == "zeroshot" and len(names) > 1 and len(set(names)) < len(names):
        same = next(name for name in names if names.count(name) > 1)
        return (
            f"{data.name}: {names.count(same)} classes are named {same!r} ({len(set(names))} "
            f"names for {len(names)} classes); their prompts are the same text, so zero-shot "
            "cannot tell them apart and its accuracy means nothing. Give every class its own name"
        )
    if task == "retrieval" and data.captions is not None:
        if len(data) < 2:
            return (
                f"{data.name} has a single image, so retrieval is always right: R@k means nothing"
            )
        if len(set(data.captions)) < 2:
            return (
                f"every caption of {data.name} is the same text, so it describes every image "
                "equally: retrieval R@k means nothing. Use captions that tell images apart"
            )
    return None
