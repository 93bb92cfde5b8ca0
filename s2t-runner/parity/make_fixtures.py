#!/usr/bin/env python3
"""Builds the parity fixtures of s2t-runner (run by hand, never in CI).

A tiny Speech2Text model with every parameter randomized (weights, biases, LayerNorm gains
and offsets, embeddings), its weights and config, and references computed by transformers'
Speech2TextForConditionalGeneration and Speech2TextFeatureExtractor for three clips (a sine,
a chirp, an espeak-ng phrase): normalized features, encoder output, teacher-forced logits,
greedy and beam-search token ids. The Rust tests (tests/parity.rs) compare against them.

Environment (outside the repository; ~5.6 GB):
    python3 -m venv /work/venv-parity
    /work/venv-parity/bin/pip install torch transformers sentencepiece safetensors numpy
    apt-get install espeak-ng sox
Run:
    HF_HUB_OFFLINE=1 /work/venv-parity/bin/python s2t-runner/parity/make_fixtures.py
torchaudio does not import beside torch 2.15, so transformers computes fbank features with its
numpy path (f64), which is what the references hold.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import wave

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import (
    Speech2TextConfig,
    Speech2TextFeatureExtractor,
    Speech2TextForConditionalGeneration,
)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures")
MODEL_DIR = os.path.join(OUT, "tiny")
SR = 16000
PHRASE = "the quick brown fox jumps over the lazy dog"

GEN = dict(num_beams=5, max_length=40, length_penalty=1.0, early_stopping=True)


def write_wav(path, samples):
    pcm = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())


def read_wav(path):
    with wave.open(path, "rb") as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2 and w.getframerate() == SR, path
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return pcm.astype(np.float32) / 32768.0


def make_clips():
    t = np.arange(int(1.5 * SR)) / SR
    sine = 0.5 * np.sin(2 * math.pi * 440.0 * t)
    f0, f1 = 100.0, 4000.0
    phase = 2 * math.pi * (f0 * t + (f1 - f0) / (2 * t[-1]) * t * t)
    chirp = 0.4 * np.sin(phase)
    write_wav(os.path.join(OUT, "sine.wav"), sine)
    write_wav(os.path.join(OUT, "chirp.wav"), chirp)
    with tempfile.TemporaryDirectory() as d:
        raw = os.path.join(d, "speech22k.wav")
        subprocess.run(["espeak-ng", "-w", raw, PHRASE], check=True)
        subprocess.run(["sox", raw, "-D", "-r", "16000", "-c", "1", "-b", "16", os.path.join(OUT, "speech.wav")], check=True)


def tiny_model():
    cfg = Speech2TextConfig(
        vocab_size=120,
        d_model=64,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_ffn_dim=128,
        conv_channels=64,
        conv_kernel_sizes=[5, 5],
        num_conv_layers=2,
        input_feat_per_channel=80,
        input_channels=1,
        max_source_positions=6000,
        max_target_positions=1024,
        scale_embedding=True,
        activation_function="relu",
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        decoder_start_token_id=2,
    )
    torch.manual_seed(20240601)
    model = Speech2TextForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn_like(p))
            elif "embed_tokens" in name:
                p.copy_(float(os.environ.get("EMB_STD", "0.15")) * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) * (float(os.environ.get("GAIN", "3.0")) / math.sqrt(fan_in)))
        # Make EOS a plausible prediction so that beams finish before max_length.
        emb = model.model.decoder.embed_tokens.weight
        emb[2].mul_(float(os.environ.get("EOS_SCALE", "2.0")))
    return model


def vocab_json(size):
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    letters = "etaoinshrdlucmfwypvbgkjqxz'"
    pieces = list(specials)
    length = 1
    while len(pieces) < size:
        import itertools
        for marker in ["\u2581", ""]:
            for combo in itertools.product(letters, repeat=length):
                if len(pieces) >= size:
                    break
                pieces.append(marker + "".join(reversed(combo)))
        length += 1
    return {p: i for i, p in enumerate(pieces[:size])}


def main():
    os.makedirs(OUT, exist_ok=True)
    make_clips()
    model = tiny_model()
    if os.path.exists(MODEL_DIR):
        shutil.rmtree(MODEL_DIR)
    model.save_pretrained(MODEL_DIR, safe_serialization=True)
    for extra in ["generation_config.json"]:
        p = os.path.join(MODEL_DIR, extra)
        if os.path.exists(p):
            os.remove(p)
    cfg_path = os.path.join(MODEL_DIR, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg.update(GEN)
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    with open(os.path.join(MODEL_DIR, "vocab.json"), "w") as f:
        json.dump(vocab_json(model.config.vocab_size), f, ensure_ascii=False)

    fe = Speech2TextFeatureExtractor()
    tensors = {}
    meta = {"phrase": PHRASE, "generation": GEN, "clips": {}}
    rng = np.random.default_rng(7)
    for clip in ["sine", "chirp", "speech"]:
        samples = read_wav(os.path.join(OUT, clip + ".wav"))
        feats = fe(samples, sampling_rate=SR, return_tensors="np")["input_features"][0].astype(np.float32)
        x = torch.from_numpy(feats)[None]
        with torch.no_grad():
            enc = model.model.encoder(input_features=x).last_hidden_state[0].numpy()
            forced = [2] + [int(v) for v in rng.integers(3, model.config.vocab_size, size=11)]
            logits = model(input_features=x, decoder_input_ids=torch.tensor([forced])).logits[0].numpy()
            greedy = model.generate(x, num_beams=1, do_sample=False, max_length=GEN["max_length"])[0].tolist()
            beams = {}
            for tag, es in [("beam", True), ("beam_noearly", False), ("beam_never", "never")]:
                out = model.generate(
                    x,
                    num_beams=GEN["num_beams"],
                    do_sample=False,
                    max_length=GEN["max_length"],
                    length_penalty=GEN["length_penalty"],
                    early_stopping=es,
                )[0].tolist()
                beams[tag] = out
        tensors[f"{clip}.features"] = feats
        tensors[f"{clip}.encoder"] = enc.astype(np.float32)
        tensors[f"{clip}.forced_tokens"] = np.array(forced, dtype=np.int64)
        tensors[f"{clip}.forced_logits"] = logits.astype(np.float32)
        tensors[f"{clip}.greedy"] = np.array(greedy, dtype=np.int64)
        for tag, ids in beams.items():
            tensors[f"{clip}.{tag}"] = np.array(ids, dtype=np.int64)
        meta["clips"][clip] = {"frames": int(feats.shape[0]), "greedy": greedy, **beams}
        print(clip, "frames", feats.shape[0], "greedy", greedy, "beam", beams["beam"], file=sys.stderr)
    save_file(tensors, os.path.join(OUT, "reference.safetensors"))
    meta["versions"] = {"torch": torch.__version__, "transformers": __import__("transformers").__version__, "numpy": np.__version__}
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
