#!/usr/bin/env python3
"""PyTorch/transformers side of the s2t-runner benchmark (run by hand, never in CI).

Loads the same model directory the Rust runner uses (e.g. `s2t-runner gen-random --config
medium --out DIR`), computes features with transformers' feature extractor and generates
with the config's decoding settings; prints one JSON line with the same timings the runner
reports (load, features, encoder, decoder, inference, real-time factor, tokens).

    HF_HUB_OFFLINE=1 /work/venv-parity/bin/python s2t-runner/parity/bench_torch.py DIR AUDIO.wav [--beams N] [--threads N]
"""
import argparse
import json
import time
import wave

import numpy as np
import torch
from transformers import Speech2TextFeatureExtractor, Speech2TextForConditionalGeneration


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("audio")
    ap.add_argument("--beams", type=int)
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    model = Speech2TextForConditionalGeneration.from_pretrained(a.model).eval()
    load_s = time.perf_counter() - t0
    cfg = json.load(open(f"{a.model}/config.json"))
    beams = a.beams or cfg.get("num_beams", 5)
    max_length = a.max_length or cfg.get("max_length", 200)
    with wave.open(a.audio, "rb") as w:
        assert w.getframerate() == 16000 and w.getsampwidth() == 2 and w.getnchannels() == 1
        samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
    fe = Speech2TextFeatureExtractor()
    runs = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        feats = torch.from_numpy(fe(samples, sampling_rate=16000, return_tensors="np")["input_features"])
        t_feat = time.perf_counter()
        with torch.inference_mode():
            enc = model.model.encoder(input_features=feats)
            t_enc = time.perf_counter()
            out = model.generate(
                encoder_outputs=enc,
                num_beams=beams,
                max_length=max_length,
                early_stopping=cfg.get("early_stopping", False),
                length_penalty=cfg.get("length_penalty", 1.0),
                do_sample=False,
            )
        t_dec = time.perf_counter()
        runs.append(dict(features_seconds=t_feat - t, encoder_seconds=t_enc - t_feat, decoder_seconds=t_dec - t_enc,
                         inference_seconds=t_dec - t, tokens=out[0].tolist()))
    best = min(runs, key=lambda r: r["inference_seconds"])
    audio_s = len(samples) / 16000
    print(json.dumps(dict(torch=torch.__version__, threads=a.threads, load_seconds=load_s, audio_seconds=audio_s,
                          beams=beams, max_length=max_length, real_time_factor=best["inference_seconds"] / audio_s,
                          **best)))


if __name__ == "__main__":
    main()
