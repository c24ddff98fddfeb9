#!/usr/bin/env python3
"""llama_ref.py: an independent numpy reference forward pass of a Llama-architecture GGUF model
(written for SmolLM2-135M-Instruct.Q4_1.gguf), to check examples/llama against.

Not run in CI: it needs numpy and the gguf package (llama.cpp's gguf-py, used only to parse the
file; the Q4_1/Q8_0 dequantization here is its own and --check-dequant compares it with
gguf.quants.dequantize). Everything after dequantization is float64.

The model: token embedding, then per layer x += Wo attn(RoPE(Wq n(x)), RoPE(Wk n(x)), Wv n(x))
and x += Wdown (silu(Wgate n(x)) * Wup n(x)) with n = RMSNorm, then the final RMSNorm and the
output matrix (token_embd when there is no output.weight). Causal attention, grouped queries
(query head h reads kv head h // (n_head / n_head_kv)). llama.cpp's converter permuted the q/k
rows so that RoPE rotates adjacent pairs (2i, 2i+1) by pos * theta^(-2i/d); that is applied here
to the weights as stored. --check-permutation un-permutes the q/k rows (the inverse of
convert_hf_to_gguf's permute), applies Hugging Face's rotate_half RoPE instead, and compares.

Checked once by hand against llama.cpp (llama-cpp-python 0.3.36) on the same ids: same greedy
tokens, mean loss 2.4263 vs 2.4329 here (128 tokens), 2.6128 vs 2.6144 (1024); logits differ by
about 0.1-0.3 (llama.cpp rounds activations to 8 bits for its quantized matrix products).

  python3 tools/llama_ref.py --model M.gguf --ids 504,3575,282,4649,314 --top 16 [--out F]
  python3 tools/llama_ref.py --model M.gguf --ids-file tests/data/llama_ref_text_ids.txt -n 128

--out writes plain text: a line "positions N", then per position t (0-based) a line
"t LSE id:logit id:logit ..." (LSE = logsumexp of all logits at t, pairs best first, %.6f),
then a line "loss L top1 A" (mean next-token loss in nats and top-1 accuracy over N-1 targets).
"""
import argparse
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as QT


def dequant(t):
    """A GGUF tensor as a float64 array of shape (rows, cols), ggml's ne reversed."""
    cols = int(t.shape[0])
    raw = np.asarray(t.data)
    if t.tensor_type == QT.F32:
        return raw.astype(np.float64).reshape(-1, cols)
    b = raw.reshape(-1).view(np.uint8)
    if t.tensor_type == QT.Q8_0:  # blocks of 32: f16 d, int8 q[32]; value d*q
        b = b.reshape(-1, 34)
        d = b[:, :2].copy().view(np.float16).astype(np.float64)
        q = b[:, 2:].view(np.int8).astype(np.float64)
        return (d * q).reshape(-1, cols)
    if t.tensor_type == QT.Q4_1:  # blocks of 32: f16 d, f16 m, 16 bytes; byte j holds j (low) and j+16 (high)
        b = b.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float64)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float64)
        qs = b[:, 4:]
        q = np.concatenate([qs & 15, qs >> 4], axis=1).astype(np.float64)
        return (d * q + m).reshape(-1, cols)
    raise SystemExit(f"{t.name}: type {t.tensor_type.name} not handled")


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf's permute: reshape(n_head, 2, hd/2, in).swapaxes(1, 2)."""
    hd = w.shape[0] // n_head
    return w.reshape(n_head, hd // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


class Model:
    def __init__(self, path):
        r = GGUFReader(path)
        self.reader = r

        def meta(key):
            return r.fields[key].contents()

        arch = meta("general.architecture")
        self.n_layer = int(meta(f"{arch}.block_count"))
        self.n_head = int(meta(f"{arch}.attention.head_count"))
        self.n_kv = int(meta(f"{arch}.attention.head_count_kv"))
        self.eps = float(meta(f"{arch}.attention.layer_norm_rms_epsilon"))
        self.theta = float(meta(f"{arch}.rope.freq_base"))
        self.tokens = meta("tokenizer.ggml.tokens")
        self.w = {t.name: dequant(t) for t in r.tensors}
        if "output.weight" not in self.w:
            self.w["output.weight"] = self.w["token_embd.weight"]
        self.d = self.w["token_embd.weight"].shape[1]
        self.hd = self.d // self.n_head

    def rope(self, x, half):
        """x: (T, heads, hd). Adjacent pairs (2i, 2i+1), or with half, (i, i + hd/2) (HF)."""
        T, hd = x.shape[0], x.shape[2]
        freq = self.theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = np.arange(T, dtype=np.float64)[:, None] * freq[None, :]  # (T, hd/2)
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if half:
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = a * c - b * s, b * c + a * s
        return out

    def norm(self, x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * w

    def forward(self, ids, hf_layout=False):
        """Logits (T, vocab) for the token ids; hf_layout: un-permuted q/k and rotate_half RoPE."""
        W, T, hd = self.w, len(ids), self.hd
        x = W["token_embd.weight"][np.asarray(ids)]
        mask = np.triu(np.full((T, T), -np.inf), 1)
        group = self.n_head // self.n_kv
        for i in range(self.n_layer):
            p = f"blk.{i}."
            wq, wk = W[p + "attn_q.weight"], W[p + "attn_k.weight"]
            if hf_layout:
                wq, wk = unpermute(wq, self.n_head), unpermute(wk, self.n_kv)
            h = self.norm(x, W[p + "attn_norm.weight"])
            q = self.rope((h @ wq.T).reshape(T, self.n_head, hd), hf_layout)
            k = self.rope((h @ wk.T).reshape(T, self.n_kv, hd), hf_layout)
            v = (h @ W[p + "attn_v.weight"].T).reshape(T, self.n_kv, hd)
            k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # head h -> kv h // group
            q, k, v = q.transpose(1, 0, 2), k.transpose(1, 0, 2), v.transpose(1, 0, 2)  # (heads, T, hd)
            s = q @ k.transpose(0, 2, 1) / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=-1, keepdims=True))
            s /= s.sum(axis=-1, keepdims=True)
            o = (s @ v).transpose(1, 0, 2).reshape(T, self.d)
            x = x + o @ W[p + "attn_output.weight"].T
            h = self.norm(x, W[p + "ffn_norm.weight"])
            g = h @ W[p + "ffn_gate.weight"].T
            u = h @ W[p + "ffn_up.weight"].T
            x = x + (g / (1 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
        return self.norm(x, W["output_norm.weight"]) @ W["output.weight"].T

    def text(self, i):
        """Token i's text, GPT-2 byte-level alphabet mapped back to bytes where it can be."""
        bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
        cs, n = bs[:], 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        back = {chr(c): b for b, c in zip(bs, cs)}
        t = self.tokens[i]
        if all(ch in back for ch in t):
            return bytes(back[ch] for ch in t).decode("utf-8", "replace")
        return t


def lse(z):
    m = z.max(axis=-1)
    return m + np.log(np.exp(z - m[:, None]).sum(axis=-1))


def check_dequant(model):
    from gguf.quants import dequantize
    worst = 0.0
    seen = set()
    for t in model.reader.tensors:
        if t.tensor_type in seen:
            continue
        seen.add(t.tensor_type)
        ref = dequantize(np.asarray(t.data), t.tensor_type).astype(np.float64).reshape(-1, int(t.shape[0]))
        diff = np.max(np.abs(ref - model.w[t.name]))
        worst = max(worst, diff)
        print(f"check-dequant: {t.name} ({t.tensor_type.name}) max |own - gguf.quants| = {diff:.3g}")
    return worst == 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--ids-file", help="whitespace-separated token ids")
    ap.add_argument("-n", type=int, default=0, help="use only the first N ids")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--out", help="write the results in the plain-text format above")
    ap.add_argument("--quiet", action="store_true", help="print only the summary")
    ap.add_argument("--check-dequant", action="store_true", help="compare dequantization with gguf.quants")
    ap.add_argument("--check-permutation", action="store_true",
                    help="also run un-permuted q/k with rotate_half RoPE and compare the logits")
    a = ap.parse_args()
    if a.ids:
        ids = [int(s) for s in a.ids.split(",") if s.strip()]
    elif a.ids_file:
        ids = [int(s) for s in open(a.ids_file).read().split()]
    else:
        raise SystemExit("give --ids or --ids-file")
    if a.n:
        ids = ids[: a.n]
    model = Model(a.model)
    ok = True
    if a.check_dequant:
        ok &= check_dequant(model)

    logits = model.forward(ids)
    T = len(ids)
    z = lse(logits)
    top = np.argsort(-logits, axis=-1, kind="stable")[:, : a.top]
    tgt = np.asarray(ids[1:])
    nll = z[:-1] - logits[np.arange(T - 1), tgt]
    loss = float(nll.mean()) if T > 1 else float("nan")
    acc = float((top[:-1, 0] == tgt).mean()) if T > 1 else float("nan")

    lines = [f"positions {T}"]
    for t in range(T):
        lines.append(f"{t} {z[t]:.6f} " + " ".join(f"{j}:{logits[t, j]:.6f}" for j in top[t]))
    lines.append(f"loss {loss:.6f} top1 {acc:.6f}")
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")
    if not a.quiet:
        for t in range(T):
            pairs = " ".join(f"{j}({model.text(j)!r}):{logits[t, j]:.3f}" for j in top[t])
            print(f"pos {t} id {ids[t]} {model.text(ids[t])!r} lse {z[t]:.4f} top: {pairs}")
    print(f"tokens {T}  mean next-token loss {loss:.6f} nats over {T - 1}  top-1 accuracy {acc:.4f}")
    print(f"greedy next token after the last position: {top[-1, 0]} {model.text(top[-1, 0])!r}")

    if a.check_permutation:
        alt = model.forward(ids, hf_layout=True)
        diff = float(np.max(np.abs(alt - logits)))
        same = bool((np.argmax(alt, axis=-1) == top[:, 0]).all())
        print(f"check-permutation: max |logits(as stored, adjacent-pair RoPE) - logits(un-permuted, "
              f"rotate_half RoPE)| = {diff:.3g}, same argmax everywhere: {same}")
        # and the wrong pairing, to show the check can fail: stored weights with rotate_half RoPE
        wrong = np.max(np.abs(model.forward(ids[:8], hf_layout=False) - _forward_mixed(model, ids[:8])))
        print(f"check-permutation: (control) stored weights with rotate_half RoPE differ by {wrong:.3g}")
        ok &= diff < 1e-6 and same
    return 0 if ok else 1


def _forward_mixed(model, ids):
    """Stored (permuted) weights with rotate_half RoPE: a deliberately wrong pairing."""
    orig = model.rope
    model.rope = lambda x, half: orig(x, True)
    try:
        return model.forward(ids)
    finally:
        model.rope = orig


if __name__ == "__main__":
    sys.exit(main())
