"""Reading an input as a model reads it, with no torch: an image file to pixels, an audio file to clips, texts to
token ids. Training, predict on a checkpoint, predict on an exported model and the demo page all read through here,
so every one of them prepares an input exactly as the others do.

NumPy, Pillow, soundfile and tokenizers only (nnlab's own dependencies): an exported model is used with these and
ONNX Runtime alone (`pip install "nnlab[runtime]"`)."""

import math
import re
import struct
from pathlib import Path

import numpy as np


def is_file(path) -> bool:
    """Whether `path` names a file (a text too long to be a file's name does not: no OSError)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):  # File name too long; a NUL in the text
        return False


# ---------------------------------------------------------------------------------------------------------- images


def load_image(path, channels: int, size: int, fit: str):
    """One image file as a (channels, size, size) uint8 array, or the reason it is unusable.

    Returns (pixels or None, problem or None, converted (another mode), resized (another size), (width, height)
    when it has more pixels than PIL calls safe (PIL's warning is silenced by the callers) else None). fit=crop scales
    the shorter side to `size` and keeps the middle (torchvision's Resize + CenterCrop); stretch scales both sides."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            huge = img.size if img.size[0] * img.size[1] > (Image.MAX_IMAGE_PIXELS or float("inf")) else None
            img.load()
            pixels, converted, resized = image_pixels(img, channels, size, fit)
    except UnidentifiedImageError:
        return None, "not an image PIL can read", False, False, None
    except Image.DecompressionBombError as e:
        return None, f"too large to decode safely ({str(e).split('pixels')[0].strip()} pixels)", False, False, None
    except (OSError, ValueError, SyntaxError) as e:  # truncated, damaged
        return None, f"unreadable ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})", False, False, None
    return pixels, None, converted, resized, huge


def image_pixels(img, channels: int, size: int, fit: str):
    """A PIL image as (channels, size, size) uint8 pixels, converted (grey or RGB; transparency onto white) and
    resized as training did; with whether it was converted and whether it was resized."""
    from PIL import Image, ImageOps

    mode = "L" if channels == 1 else "RGB"
    converted, resized = img.mode != mode, img.size != (size, size)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")  # transparent pixels onto white, not onto black
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    img = img.convert(mode)
    if resized:
        bilinear = Image.BILINEAR
        img = ImageOps.fit(img, (size, size), bilinear) if fit == "crop" else img.resize((size, size), bilinear)
    pixels = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(size, size, channels)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)), converted, resized


# ----------------------------------------------------------------------------------------------------------- audio


def wav_is_truncated(path: Path) -> bool:
    """True when a RIFF/WAVE file's data chunk claims more bytes than the file holds.

    libsndfile reads such a file without complaint (it shortens the frame count), so a download cut
    short would pass as a short clip; the header says what the file should hold."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk, length = struct.unpack("<4sI", f.read(8))
            if chunk == b"data":
                return pos + 8 + length > size
            pos += 8 + length + (length & 1)
    return False


def read_audio(path, sample_rate: int):
    """A whole audio file as float32 mono samples at `sample_rate`, or the reason it is unusable.

    Returns (wave or None, problem or None, was_stereo, was_resampled): channels are averaged, another rate is
    resampled (`resample`)."""
    import soundfile as sf

    try:
        if wav_is_truncated(Path(path)):
            return None, "truncated", False, False
        data, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # noqa: BLE001  unreadable: not audio, a format libsndfile does not know, missing
        reason = getattr(e, "error_string", None) or str(e).splitlines()[0][:80]  # libsndfile's reason alone
        if reason.startswith("Format not recognised"):
            return None, "not audio (not a WAV, FLAC, OGG or MP3 file that libsndfile reads)", False, False
        return None, f"unreadable ({reason})", False, False
    if data.shape[0] == 0:
        return None, "empty", False, False
    wave = data.mean(axis=1, dtype=np.float32)  # (frames,): stereo is downmixed
    stereo, resampled = data.shape[1] > 1, rate != sample_rate
    if resampled:
        wave = resample(wave, rate, sample_rate)
    return wave, None, stereo, resampled


def resample(wave: np.ndarray, orig: int, new: int, zeros: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """float32 samples at rate `orig` resampled to rate `new` by band-limited (Hann-windowed sinc) interpolation:
    torchaudio.functional.resample's method and defaults, so clips read here match those PyTorch reads."""
    gcd = math.gcd(int(orig), int(new))
    orig, new = int(orig) // gcd, int(new) // gcd
    base = min(orig, new) * rolloff
    width = math.ceil(zeros * orig / base)
    idx = np.arange(-width, width + orig, dtype=np.float64)[None, :] / orig
    t = (np.arange(0, -new, -1, dtype=np.float64)[:, None] / new + idx) * base
    t = t.clip(-zeros, zeros)
    window = np.cos(t * math.pi / zeros / 2) ** 2
    t *= math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        kernels = np.where(t == 0, 1.0, np.sin(t) / t)
    kernels = (kernels * window * (base / orig)).astype(np.float32)  # (new, 2 * width + orig)
    padded = np.pad(wave.astype(np.float32), (width, width + orig))
    frames = np.lib.stride_tricks.sliding_window_view(padded, kernels.shape[1])[::orig]  # (blocks, taps)
    out = (frames @ kernels.T).reshape(-1)
    return out[: math.ceil(new * len(wave) / orig)].astype(np.float32)


def fit_length(wave: np.ndarray, samples: int) -> np.ndarray:
    """A clip of exactly `samples` samples: a shorter one padded with silence on both sides, a longer one's middle."""
    if len(wave) >= samples:
        start = (len(wave) - samples) // 2
        return wave[start : start + samples]
    left = (samples - len(wave)) // 2
    return np.pad(wave, (left, samples - len(wave) - left))


def as_int16(wave: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1] as 16-bit integers, as a clip is stored for training."""
    return np.round(np.clip(wave, -1, 1) * 32767).astype(np.int16)


def audio_windows(wave: np.ndarray, sample_rate: int, samples: int):
    """A file's int16 samples (`wave`) as the model reads them: (windows (N, samples) float32 in [-1, 1), each
    window's (start, end) in seconds). Up to a little longer than a clip: one clip, padded with silence or cut to its
    middle, as training read it; longer: windows half a clip apart, the last one ending at the file's end."""
    if len(wave) <= samples * 1.25:
        start = max(0.0, (len(wave) - samples) / 2 / sample_rate)
        return fit_length(wave, samples)[None].astype(np.float32) / 32768, [(start, start + samples / sample_rate)]
    starts = list(range(0, len(wave) - samples + 1, samples // 2))
    if starts[-1] + samples < len(wave):
        starts.append(len(wave) - samples)
    windows = np.stack([wave[s : s + samples] for s in starts]).astype(np.float32) / 32768
    return windows, [(s / sample_rate, (s + samples) / sample_rate) for s in starts]


# ----------------------------------------------------------------------------------------------------------- texts

BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)
PAD, UNK = 0, 1  # token ids reserved by the tokenizer


def clean(text: str) -> str:
    """`<br />` line breaks and runs of white space become single spaces."""
    return " ".join(BREAK.sub(" ", text).split())


def head_and_tail(ids: list[int], max_length: int | None) -> list[int]:
    """A text's token ids cut to `max_length`: a longer one keeps its first max_length // 2 and its last
    max_length - max_length // 2 (nnlab.data.text.truncate_flat does the same to a whole split at once)."""
    if not max_length or len(ids) <= max_length:
        return ids
    return ids[: max_length // 2] + ids[len(ids) - (max_length - max_length // 2) :]


def token_ids(tokenizer, texts: list[str], max_length: int | None) -> list[list[int]]:
    """Each text cleaned, tokenised and cut as the training data was (an empty text reads as one unknown token)."""
    encoded = tokenizer.encode_batch([clean(t) for t in texts])
    return [head_and_tail(e.ids or [UNK], max_length) for e in encoded]


def padded(ids: list[list[int]]) -> np.ndarray:
    """Token id lists as one (N, longest) int64 array, padded with PAD at the end."""
    out = np.full((len(ids), max(map(len, ids))), PAD, dtype=np.int64)
    for row, these in enumerate(ids):
        out[row, : len(these)] = these
    return out
