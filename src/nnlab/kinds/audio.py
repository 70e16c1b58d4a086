"""Audio: (B, samples) waveforms in [-1, 1), mono at the data's sample rate; shown as playable clips."""

from pathlib import Path

from nnlab.kinds import Kind, PredictError

CLIPS = 8  # misclassified and as many correct test clips kept as WAV files and in the W&B table


class AudioKind(Kind):
    name = "audio"

    def show(self, samples, names, preprocessing, out_dir):
        """Up to CLIPS misclassified and as many correct test clips, written to test_clips/*.wav (true and
        predicted word in the name), and a W&B table of them."""
        import soundfile as sf

        from nnlab.atomic import atomic_open

        rate = preprocessing["sample_rate"]
        chosen = [s for s in samples if s[3]][:CLIPS] + [s for s in samples if not s[3]][:CLIPS]
        folder = Path(out_dir) / "test_clips"
        folder.mkdir(exist_ok=True)
        for old in folder.glob("*.wav"):  # a rerun's clips replace the last run's
            old.unlink()
        clips = []
        for i, (wave, label, p, wrong) in enumerate(chosen):
            true, predicted, confidence = names[label], names[int(p.argmax())], round(float(p.max()), 4)
            with atomic_open(folder / f"{i:02d}_{'wrong' if wrong else 'right'}_{true}_as_{predicted}.wav") as f:
                sf.write(f, wave.float().clamp(-1, 1).numpy(), rate, format="WAV", subtype="PCM_16")
            clips.append(
                (
                    wave.float(),
                    f"true {true}, predicted {predicted} ({confidence})",
                    [true, predicted, confidence, not wrong],
                )
            )
        if not clips:
            return {}

        def table(wandb):
            rows = [[wandb.Audio(w.numpy(), sample_rate=rate, caption=c), *row] for w, c, row in clips]
            return wandb.Table(columns=["audio", "label", "prediction", "confidence", "correct"], data=rows)

        return {"test/clips": table}

    def raw(self, preprocessing, path):
        """The file's windows as float32 samples in [-1, 1): mono at the model's rate, quantised to 16 bits as the
        training clips were; one clip-length window (padded with silence when shorter), or for a longer file windows
        half a clip apart, the last one ending at the file's end (nnlab.inputs.audio_windows)."""
        from nnlab.inputs import as_int16, audio_windows, is_file, read_audio

        if not is_file(path):
            raise PredictError(f"{path} is not a file; give the paths of audio files (WAV, FLAC, ...)")
        rate = preprocessing["sample_rate"]
        wave, problem, _, _ = read_audio(path, rate)
        if problem:
            raise PredictError(f"{path} is {problem}: it cannot be classified")
        windows, spans = audio_windows(as_int16(wave), rate, preprocessing["samples"])
        return list(windows), spans

    def preparation(self, preprocessing):
        from torch import nn

        return nn.Identity()  # the network computes its features from the samples

    def example(self, preprocessing):
        """Two clips of noise, as 16-bit audio read from a file is."""
        import numpy as np

        rng = np.random.default_rng(0)
        return (np.round(rng.uniform(-0.3, 0.3, (2, preprocessing["samples"])) * 32767) / 32768).astype(np.float32)

    def describe(self, preprocessing):
        rate, n = preprocessing["sample_rate"], preprocessing["samples"]
        return {
            "name": "waveform",
            "dtype": "float32",
            "shape": ["batch", n],
            "prepare": (
                f"decode the file, average its channels, resample it to {rate} Hz (Hann-windowed sinc, as "
                f"torchaudio.functional.resample), round to 16-bit integers and divide by 32768; a clip of up to "
                f"{n * 1.25 / rate:g} s is padded with silence on both sides (or cut to its middle) to {n} samples, "
                f"a longer file is read in windows of {n} samples, {n // 2} apart (the graph computes the log-mel "
                "features)"
            ),
            "sample_rate": rate,
            "samples": n,
        }
