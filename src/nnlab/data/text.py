"""What every text data set shares: cleaning, the word-level tokenizer, flat token storage and its truncation."""

import torch

from nnlab.inputs import PAD, UNK, clean  # noqa: F401  one cleaning and one pair of reserved ids everywhere


def train_tokenizer(texts: list[str], vocab_size: int, min_frequency: int):
    """A word-level tokenizer (Hugging Face `tokenizers`): NFKC, lower case, words and punctuation split,
    the `vocab_size` most frequent tokens seen at least `min_frequency` times; id 0 pads, id 1 is unknown."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=["[PAD]", "[UNK]"], show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    return tokenizer


def truncate_flat(ids, offsets, max_length: int) -> tuple:
    """Every review of a flat split (review i is ids[offsets[i]:offsets[i+1]]) cut to `max_length` tokens:
    a longer review keeps its first `max_length // 2` and last `max_length - max_length // 2` tokens.

    The opening and the verdict at the end carry most of a review's sentiment (head+tail truncation
    scored best on IMDB in Sun et al., 2019, "How to Fine-Tune BERT for Text Classification")."""
    lengths = offsets[1:] - offsets[:-1]
    kept = lengths.clamp_max(max_length)
    new_offsets = torch.cat([offsets.new_zeros(1), kept.cumsum(0)])
    review = torch.repeat_interleave(torch.arange(len(kept)), kept)  # the review of each kept token
    position = torch.arange(int(new_offsets[-1])) - new_offsets[:-1][review]  # its place in the kept review
    # Tokens past the head come from the tail: skip the middle that was cut out.
    skipped = torch.where(position >= max_length // 2, (lengths - kept)[review], 0)
    return ids[offsets[:-1][review] + position + skipped], new_offsets


def encode(tokenizer, texts: list[str], max_length: int | None) -> tuple:
    """Token ids of all texts as one flat int32 tensor plus offsets: review i is ids[offsets[i]:offsets[i+1]].
    Each text is cut to `max_length` tokens (`truncate_flat`); None keeps every token."""
    encoded = [e.ids or [UNK] for e in tokenizer.encode_batch(texts)]
    lengths = torch.tensor([len(ids) for ids in encoded])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids = torch.tensor([i for ids in encoded for i in ids], dtype=torch.int32)
    return truncate_flat(ids, offsets, max_length) if max_length else (ids, offsets)
