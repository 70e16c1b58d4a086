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

    def read(self, preprocessing, path):
        """The file's windows (N, samples) in [-1, 1): one clip-length window (padded with silence when shorter),
        or for a longer file windows half a clip apart, the last one ending at the file's end."""
        import torch

        from nnlab.data.speech import decode, fit_length

        rate, n = preprocessing["sample_rate"], preprocessing["samples"]
        if not Path(path).is_file():
            raise PredictError(f"{path} is not a file; give the paths of audio files (WAV, FLAC, ...)")
        whole, problem, _, _ = decode(path, rate, None)
        if problem:
            raise PredictError(f"{path} is {problem}: it cannot be classified")
        if len(whole) <= n * 1.25:  # up to a little longer than a clip: one clip, as training read it
            start = max(0.0, (len(whole) - n) / 2 / rate)
            return fit_length(whole, n)[None].float() / 32768, [(start, start + n / rate)]
        starts = list(range(0, len(whole) - n + 1, n // 2))
        if starts[-1] + n < len(whole):
            starts.append(len(whole) - n)
        windows = torch.stack([whole[s : s + n] for s in starts]).float() / 32768
        return windows, [(s / rate, (s + n) / rate) for s in starts]
