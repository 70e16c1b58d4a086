"""nnlab.inputs reads an input as PyTorch's side reads it, with NumPy alone: the resampling is torchaudio's, a text's
head-and-tail cut is the data modules' (truncate_flat), and the module imports no torch (an exported model is used
where there is none)."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from nnlab.inputs import as_int16, audio_windows, head_and_tail, padded, resample
from tests.helpers import ROOT


@pytest.mark.parametrize("rates", [(44100, 16000), (8000, 16000), (22050, 8000), (48000, 44100), (16000, 12000)])
def test_resampling_is_torchaudios(rates):
    import torchaudio.functional as AF

    orig, new = rates
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, orig // 3 + 17).astype(np.float32)
    ours = resample(wave, orig, new)
    theirs = AF.resample(torch.from_numpy(wave), orig, new).numpy()
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() < 1e-5
    assert np.abs(as_int16(ours).astype(int) - as_int16(theirs).astype(int)).max() <= 1  # a 16-bit step at most


def test_a_texts_head_and_tail_are_the_data_modules():
    from nnlab.data.text import truncate_flat

    texts = [list(range(2, 2 + n)) for n in (1, 5, 9, 10, 11, 40)]
    lengths = torch.tensor([len(t) for t in texts])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    ids, cut = truncate_flat(torch.tensor([i for t in texts for i in t]), offsets, 9)
    flat = [ids[a:b].tolist() for a, b in zip(cut[:-1].tolist(), cut[1:].tolist())]
    assert [head_and_tail(t, 9) for t in texts] == flat
    assert padded([[5, 6, 7], [8]]).tolist() == [[5, 6, 7], [8, 0, 0]]


def test_a_long_file_is_read_in_windows_half_a_clip_apart_ending_at_its_end():
    wave = np.arange(2500, dtype=np.int16)
    windows, spans = audio_windows(wave, 1000, 1000)
    assert [(a, b) for a, b in spans] == [(0.0, 1.0), (0.5, 1.5), (1.0, 2.0), (1.5, 2.5)]
    assert windows.shape == (4, 1000) and windows.dtype == np.float32 and windows[-1, -1] == 2499 / 32768
    short, (span,) = audio_windows(wave[:400], 1000, 1000)
    assert short.shape == (1, 1000) and short[0, 300] == 0 and span == (0.0, 1.0)  # silence on both sides


def test_nnlab_reads_inputs_and_exports_without_importing_torch():
    code = (
        "import sys, nnlab.inputs, nnlab.exported, nnlab.predict, nnlab.kinds; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
