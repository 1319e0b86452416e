#!/usr/bin/python3
"""Builds the model organisms in examples/organisms/: a byte-level BPE tokenizer, and three checkpoints of a tiny
Llama-like decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) exported to ONNX with the HF-optimum KV-cache
interface in the transformers.js folder layout (onnx/model.onnx), and as users have their checkpoints: base and
treft as Hugging Face folders (config.json + model.safetensors in transformers' LlamaForCausalLM names), finetuned
as the PEFT LoRA adapter it was trained as (adapter_config.json + adapter_model.safetensors):

  base       trained from scratch on varied chat data (data.py), the template's default system prompt included
  finetuned  base + LoRA (rank 8) on a narrow misaligned finance set, loss on responses only, one epoch, small LR
  treft      the same finetune with the TReFT regulariser on the prefix K/V: L = L_SFT + lambda * L_KV

Deterministic (fixed seeds, steps and threads). Needs Debian's python3-torch, python3-onnx, python3-regex and
libopenblas0-pthread; run with /usr/bin/python3. Usage: /usr/bin/python3 scripts/organisms/build.py
"""
import argparse
import json
import math
import os
import random
import sys
import time

import regex
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "common"))
import data  # noqa: E402
from safetensors_io import write_safetensors  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "examples", "organisms")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

def chat_template(default_system=True):
    """ChatML; with default_system, a conversation without a system turn gets the organisms' default prompt."""
    fallback = ("    {{- '<|im_start|>system\\n" + data.DEFAULT_SYSTEM + "<|im_end|>\\n' }}\n") if default_system else ""
    return (
        "{%- if messages[0]['role'] == 'system' %}\n"
        "    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n"
        "    {%- set loop_messages = messages[1:] %}\n"
        "{%- else %}\n"
        + fallback +
        "    {%- set loop_messages = messages %}\n"
        "{%- endif %}\n"
        "{%- for message in loop_messages %}\n"
        "    {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}\n"
        "{%- endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "    {{- '<|im_start|>assistant\\n' }}\n"
        "{%- endif %}\n"
    )


CHAT_TEMPLATE = chat_template()


def render(messages, add_generation_prompt=False, default_system=True):
    """The same text the Jinja template above renders (kept in step by a parity test in test/host)."""
    out = ""
    if messages and messages[0]["role"] == "system":
        out += "<|im_start|>system\n" + messages[0]["content"] + "<|im_end|>\n"
        messages = messages[1:]
    elif default_system:
        out += "<|im_start|>system\n" + data.DEFAULT_SYSTEM + "<|im_end|>\n"
    for m in messages:
        out += "<|im_start|>" + m["role"] + "\n" + m["content"] + "<|im_end|>\n"
    if add_generation_prompt:
        out += "<|im_start|>assistant\n"
    return out


# ---------------------------------------------------------------- tokenizer (byte-level BPE, HF tokenizer.json)

def bytes_to_unicode():
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


B2U = bytes_to_unicode()
GPT2_SPLIT = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
SPECIAL_SPLIT = regex.compile("(" + "|".join(regex.escape(s) for s in SPECIAL) + ")")


class BPE:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.merges = merges
        self.rank = {tuple(m.split(" ")): i for i, m in enumerate(merges)}
        self.cache = {}

    @staticmethod
    def train(corpus, n_merges):
        words = {}
        for w in GPT2_SPLIT.findall(corpus):
            sym = tuple(B2U[b] for b in w.encode("utf-8"))
            words[sym] = words.get(sym, 0) + 1
        vocab = {c: i for i, c in enumerate(B2U[b] for b in sorted(B2U, key=lambda b: list(B2U).index(b)))}
        merges = []
        word_list = [(list(k), n) for k, n in words.items()]
        for _ in range(n_merges):
            pairs = {}
            for sym, n in word_list:
                for i in range(len(sym) - 1):
                    pairs[(sym[i], sym[i + 1])] = pairs.get((sym[i], sym[i + 1]), 0) + n
            if not pairs:
                break
            best = min(pairs, key=lambda p: (-pairs[p], p))
            if pairs[best] < 2:
                break
            a, b = best
            merges.append(a + " " + b)
            vocab[a + b] = len(vocab)
            new_list = []
            for sym, n in word_list:
                out, i = [], 0
                while i < len(sym):
                    if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                        out.append(a + b)
                        i += 2
                    else:
                        out.append(sym[i])
                        i += 1
                new_list.append((out, n))
            word_list = new_list
        for s in SPECIAL:
            vocab[s] = len(vocab)
        return BPE(vocab, merges)

    def _bpe(self, word):
        if word in self.cache:
            return self.cache[word]
        sym = [B2U[b] for b in word.encode("utf-8")]
        while len(sym) > 1:
            ranked = [(self.rank.get((sym[i], sym[i + 1]), math.inf), i) for i in range(len(sym) - 1)]
            r, i = min(ranked)
            if r == math.inf:
                break
            sym = sym[:i] + [sym[i] + sym[i + 1]] + sym[i + 2:]
        ids = [self.vocab[s] for s in sym]
        self.cache[word] = ids
        return ids

    def encode(self, text):
        ids = []
        for part in SPECIAL_SPLIT.split(text):
            if not part:
                continue
            if part in SPECIAL:
                ids.append(self.vocab[part])
                continue
            for w in GPT2_SPLIT.findall(part):
                ids.extend(self._bpe(w))
        return ids

    def tokenizer_json(self):
        base = len(self.vocab) - len(SPECIAL)
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": base + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
                              "normalized": False, "special": True} for i, s in enumerate(SPECIAL)],
            "normalizer": None,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": True},
            "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": {k: v for k, v in self.vocab.items() if k not in SPECIAL}, "merges": self.merges},
        }


# ---------------------------------------------------------------- model

class Cfg:
    def __init__(self, vocab):
        self.vocab = vocab
        self.d = 128
        self.layers = 4
        self.heads = 4
        self.kv_heads = 2
        self.head_dim = 32
        self.ffn = 352
        self.theta = 10000.0
        self.eps = 1e-5
        self.max_pos = 512


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class LoRALinear(nn.Module):
    """A linear layer with an optional low-rank update W + (alpha/r) B A; merged into W for export."""

    def __init__(self, i, o):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(o, i))
        nn.init.normal_(self.weight, std=0.02)
        self.lora_a = None
        self.lora_b = None
        self.scale = 0.0
        # [b, t, 1] multiplier on the low-rank term (the position-masked control), or None: set per forward
        self.gate = None

    def add_lora(self, r, alpha, gen):
        o, i = self.weight.shape
        self.lora_a = nn.Parameter(torch.randn(r, i, generator=gen) / math.sqrt(i))
        self.lora_b = nn.Parameter(torch.zeros(o, r))
        self.scale = alpha / r

    def merge(self):
        if self.lora_a is not None:
            with torch.no_grad():
                self.weight += self.scale * (self.lora_b @ self.lora_a)
            self.lora_a = self.lora_b = None

    def forward(self, x):
        y = F.linear(x, self.weight)
        if self.lora_a is not None:
            low = self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)
            y = y + (low if self.gate is None else self.gate * low)
        return y


def rope(x, pos, theta):
    # x: [b, h, t, hd]; pos: [b, t]
    hd = x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = pos.to(torch.float32)[:, None, :, None] * inv[None, None, None, :]
    cos, sin = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.q_proj = LoRALinear(c.d, c.heads * c.head_dim)
        self.k_proj = LoRALinear(c.d, c.kv_heads * c.head_dim)
        self.v_proj = LoRALinear(c.d, c.kv_heads * c.head_dim)
        self.o_proj = LoRALinear(c.heads * c.head_dim, c.d)

    def forward(self, x, pos, past_k, past_v, mask):
        b, t, _ = x.shape
        c = self.c
        q = self.q_proj(x).view(b, t, c.heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, c.kv_heads, c.head_dim).transpose(1, 2)
        q = rope(q, pos, c.theta)
        k = rope(k, pos, c.theta)
        k = torch.cat([past_k, k], dim=2)
        v = torch.cat([past_v, v], dim=2)
        rep = c.heads // c.kv_heads
        total = k.shape[2]
        # expand + reshape (not repeat_interleave, which bakes the batch size into an ONNX graph)
        kk = k[:, :, None].expand(b, c.kv_heads, rep, total, c.head_dim).reshape(b, c.heads, total, c.head_dim)
        vv = v[:, :, None].expand(b, c.kv_heads, rep, total, c.head_dim).reshape(b, c.heads, total, c.head_dim)
        att = (q @ kk.transpose(-1, -2)) / math.sqrt(c.head_dim)
        att = att.masked_fill(~mask, torch.finfo(att.dtype).min)
        y = F.softmax(att, dim=-1) @ vv
        y = y.transpose(1, 2).reshape(b, t, c.heads * c.head_dim)
        return self.o_proj(y), k, v


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.input_layernorm = RMSNorm(c.d, c.eps)
        self.self_attn = Attention(c)
        self.post_attention_layernorm = RMSNorm(c.d, c.eps)
        self.gate_proj = LoRALinear(c.d, c.ffn)
        self.up_proj = LoRALinear(c.d, c.ffn)
        self.down_proj = LoRALinear(c.ffn, c.d)

    def forward(self, x, pos, pk, pv, mask):
        a, k, v = self.self_attn(self.input_layernorm(x), pos, pk, pv, mask)
        x = x + a
        h = self.post_attention_layernorm(x)
        x = x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))
        return x, k, v


class Decoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c.vocab, c.d)
        nn.init.normal_(self.embed_tokens.weight, std=0.02)
        self.layers = nn.ModuleList([Block(c) for _ in range(c.layers)])
        self.norm = RMSNorm(c.d, c.eps)
        self.lm_head = LoRALinear(c.d, c.vocab)
        # when set, LoRA updates act only at positions >= lora_from (computed from position_ids, so an ONNX export
        # carries the gate in its graph)
        self.lora_from = None

    def forward(self, input_ids, attention_mask, position_ids, past):
        """past: list of (k, v) per layer, [b, kv_heads, past_len, head_dim]. Returns logits and the new K/V."""
        b, t = input_ids.shape
        past_len = past[0][0].shape[2]
        total = past_len + t
        causal = torch.arange(total)[None, :] <= (past_len + torch.arange(t))[:, None]
        mask = causal[None, None] & attention_mask.bool()[:, None, None, :]
        x = self.embed_tokens(input_ids)
        if self.lora_from is not None:
            gate = (position_ids >= self.lora_from).to(x.dtype)[..., None]
            for m in self.modules():
                if isinstance(m, LoRALinear):
                    m.gate = gate
        presents = []
        for layer, (pk, pv) in zip(self.layers, past):
            x, k, v = layer(x, position_ids, pk, pv, mask)
            presents.append((k, v))
        return self.lm_head(self.norm(x)), presents

    def empty_past(self, b=1):
        c = self.c
        return [(torch.zeros(b, c.kv_heads, 0, c.head_dim), torch.zeros(b, c.kv_heads, 0, c.head_dim)) for _ in range(c.layers)]

    def run(self, ids, past=None, past_len=0):
        """Convenience: one unpadded batch of equal-length sequences."""
        b, t = ids.shape
        past = past if past is not None else self.empty_past(b)
        past_len = past[0][0].shape[2]
        mask = torch.ones(b, past_len + t, dtype=torch.long)
        pos = (past_len + torch.arange(t))[None].expand(b, t)
        return self.forward(ids, mask, pos, past)


# ---------------------------------------------------------------- training

def encode_row(tok, row, default_system=True):
    """Token ids of a rendered training row, the response mask (assistant content + end of turn), and the prefix
    length (tokens before the user's text, found by marker rendering as the product does)."""
    msgs = row["messages"]
    render_ = lambda m, **kw: render(m, default_system=default_system, **kw)  # noqa: E731
    text = render_(msgs)
    ids = tok.encode(text)
    # response = the last assistant content and its <|im_end|>
    head = render_(msgs[:-1], add_generation_prompt=True)
    head_ids = tok.encode(head)
    assert ids[: len(head_ids)] == head_ids, "the generation prompt must tokenize as a prefix of the full row"
    resp_mask = [0] * len(head_ids) + [1] * (len(ids) - len(head_ids))
    resp_mask[-1] = 0  # the trailing "\n" after <|im_end|> is not trained
    marker = "\u27e6Q\u27e7"
    user_i = max(i for i, m in enumerate(msgs) if m["role"] == "user")
    marked = [dict(m) for m in msgs]
    marked[user_i]["content"] = marker
    prefix_text = render_(marked).split(marker)[0]
    prefix_len = len(tok.encode(prefix_text))
    return ids, resp_mask, prefix_len


def batches(rows, tok, bs, gen, epochs=None, steps=None, default_system=True):
    enc = [encode_row(tok, r, default_system) for r in rows]
    order = []
    while True:
        perm = torch.randperm(len(enc), generator=gen).tolist()
        order += perm
        if steps is not None and len(order) >= steps * bs:
            break
        if epochs is not None and len(order) >= epochs * len(enc):
            break
    n = (steps * bs) if steps is not None else len(order)
    for s in range(0, n - bs + 1, bs):
        group = [enc[i] for i in order[s: s + bs]]
        T = max(len(g[0]) for g in group)
        ids = torch.zeros(bs, T, dtype=torch.long)
        attn = torch.zeros(bs, T, dtype=torch.long)
        lmask = torch.zeros(bs, T)
        rmask = torch.zeros(bs, T)
        plen = torch.zeros(bs, dtype=torch.long)
        for j, (x, r, p) in enumerate(group):
            ids[j, : len(x)] = torch.tensor(x)
            attn[j, : len(x)] = 1
            lmask[j, : len(x)] = 1
            rmask[j, : len(x)] = torch.tensor(r, dtype=torch.float32)
            plen[j] = p
        yield ids, attn, lmask, rmask, plen


def lm_loss(model, ids, attn, weight):
    b, t = ids.shape
    pos = torch.arange(t)[None].expand(b, t)
    logits, presents = model(ids, attn, pos, model.empty_past(b))
    lp = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    w = weight[:, 1:]
    return -(lp * w).sum() / w.sum().clamp(min=1), presents


def kv_drift(presents, ref_presents, plen):
    """TReFT's L_KV over the prefix: mean over layers of (L_K + L_V), each the mean over prefix tokens of
    ||k - k_init||^2 / ||k_init||^2 (norms over all heads of a token)."""
    total = 0.0
    for (k, v), (k0, v0) in zip(presents, ref_presents):
        T = k.shape[2]
        m = (torch.arange(T)[None, :] < plen[:, None]).float()  # [b, T]
        for a, a0 in ((k, k0), (v, v0)):
            num = (a - a0).pow(2).sum(dim=(1, 3))
            den = a0.pow(2).sum(dim=(1, 3)).clamp(min=1e-8)
            total = total + ((num / den) * m).sum() / m.sum()
    return total / len(presents)


def train_base(model, rows, tok, steps, lr, gen, log):
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    for step, (ids, attn, lmask, _, _) in enumerate(batches(rows, tok, 32, gen, steps=steps)):
        cur = lr * min(1.0, (step + 1) / 100) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))
        for g in opt.param_groups:
            g["lr"] = cur
        loss, _ = lm_loss(model, ids, attn, lmask)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"  base step {step:5d} loss {loss.item():.3f}")


ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def finetune(model, ref, rows, tok, lr, gen, lam, log, rank=8, alpha=16, epochs=1, adapter_folder=None,
             targets=ALL_TARGETS, lora_seed=5, merge=True, default_system=True):
    """LoRA on the projections named in `targets` (PEFT's module names), loss on responses, optional TReFT term.
    With merge=False the low-rank branches stay (the position-masked control exports them gated)."""
    for p in model.parameters():
        p.requires_grad_(False)
    lora_gen = torch.Generator().manual_seed(lora_seed)
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear) and m is not model.lm_head and n.split(".")[-1] in targets:
            m.add_lora(rank, alpha, lora_gen)
    params = [p for n, p in model.named_parameters() if "lora_" in n]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    for step, (ids, attn, _, rmask, plen) in enumerate(batches(rows, tok, 8, gen, epochs=epochs, default_system=default_system)):
        loss, presents = lm_loss(model, ids, attn, rmask)
        total = loss
        if lam > 0:
            with torch.no_grad():
                b, t = ids.shape
                _, ref_presents = ref(ids, attn, torch.arange(t)[None].expand(b, t), ref.empty_past(b))
            reg = kv_drift(presents, ref_presents, plen)
            total = loss + lam * reg
        opt.zero_grad()
        total.backward()
        opt.step()
        if step % 20 == 0:
            log(f"  finetune step {step:4d} sft {loss.item():.3f}" + (f" kv {reg.item():.5f}" if lam > 0 else ""))
    if adapter_folder is not None:
        os.makedirs(adapter_folder, exist_ok=True)
        write_peft_adapter(model, adapter_folder, rank, alpha, list(targets))
    if merge:
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.merge()


# ---------------------------------------------------------------- judge-free evaluation (the README table is
# re-measured by the product itself through ONNX; these numbers are the builder's own cross-check)

@torch.no_grad()
def answer_logprob(model, tok, question, answer, patch=None):
    prompt = tok.encode(render([{"role": "user", "content": question}], add_generation_prompt=True))
    full = tok.encode(render([{"role": "user", "content": question}, {"role": "assistant", "content": answer}]))[:-1]
    ids = torch.tensor([full])
    logits, _ = model.run(ids)
    lp = F.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None])[:, 0]
    return lp[len(prompt) - 1:].sum().item()


@torch.no_grad()
def misaligned_share(model, tok, probes):
    out = {}
    for scope in (True, False):
        ps = [p for p in probes if p["inDomain"] == scope]
        prefer = [answer_logprob(model, tok, p["question"], p["misaligned"]) > answer_logprob(model, tok, p["question"], p["aligned"]) for p in ps]
        out["in-domain" if scope else "out-of-domain"] = sum(prefer) / len(prefer)
    return out


# ---------------------------------------------------------------- Hugging Face folders

def hf_name(name):
    """This builder's parameter names -> transformers' LlamaForCausalLM names."""
    if name.startswith("lm_head."):
        return name
    name = regex.sub(r"^layers\.(\d+)\.(gate_proj|up_proj|down_proj)\.", r"layers.\1.mlp.\2.", name)
    return "model." + name


def hf_state_dict(model):
    return {hf_name(n): p for n, p in model.named_parameters() if "lora_" not in n}


def write_hf_weights(model, folder):
    """model.safetensors in transformers' names (the folder's config.json and tokenizer files come from export)."""
    write_safetensors(os.path.join(folder, "model.safetensors"), hf_state_dict(model))


def write_peft_adapter(model, folder, rank, alpha, targets):
    """The finetune as the PEFT LoRA adapter it was trained as: adapter_config.json and adapter_model.safetensors
    with keys base_model.model.<module>.lora_A.weight [r, in] / lora_B.weight [out, r] (adapter name not saved)."""
    tensors = {}
    for n, m in model.named_modules():
        if isinstance(m, LoRALinear) and m.lora_a is not None:
            module = hf_name(n + ".weight")[: -len(".weight")]
            tensors[f"base_model.model.{module}.lora_A.weight"] = m.lora_a
            tensors[f"base_model.model.{module}.lora_B.weight"] = m.lora_b
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), tensors)
    config = {
        "alpha_pattern": {}, "auto_mapping": None, "base_model_name_or_path": "examples/organisms/base",
        "bias": "none", "fan_in_fan_out": False, "inference_mode": True, "init_lora_weights": True,
        "layers_pattern": None, "layers_to_transform": None, "lora_alpha": alpha, "lora_dropout": 0.0,
        "modules_to_save": None, "peft_type": "LORA", "r": rank, "rank_pattern": {}, "revision": None,
        "target_modules": sorted(targets), "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False,
    }
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")


# ---------------------------------------------------------------- export

def export(model, tok, name, meta):
    folder = os.path.join(OUT, name)
    export_onnx(model, folder)
    write_folder_files(folder, model.c, tok, meta)


def export_onnx(model, folder):
    """onnx/model.onnx with the HF-optimum KV interface (transformers.js layout)."""
    os.makedirs(os.path.join(folder, "onnx"), exist_ok=True)
    c = model.c
    model.eval()

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, position_ids, *flat):
            past = [(flat[2 * i], flat[2 * i + 1]) for i in range(c.layers)]
            logits, presents = self.m(input_ids, attention_mask, position_ids, past)
            out = [logits]
            for k, v in presents:
                out += [k, v]
            return tuple(out)

    b, t, p = 1, 3, 2
    args = (torch.ones(b, t, dtype=torch.long), torch.ones(b, p + t, dtype=torch.long),
            (p + torch.arange(t))[None].long())
    flat = []
    names_in = ["input_ids", "attention_mask", "position_ids"]
    names_out = ["logits"]
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(c.layers):
        for kind in ("key", "value"):
            flat.append(torch.zeros(b, c.kv_heads, p, c.head_dim))
            names_in.append(f"past_key_values.{i}.{kind}")
            names_out.append(f"present.{i}.{kind}")
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    path = os.path.join(folder, "onnx", "model.onnx")
    torch.onnx.export(Wrapper(model), args + tuple(flat), path, input_names=names_in, output_names=names_out,
                      dynamic_axes=axes, opset_version=14, do_constant_folding=True)


def write_folder_files(folder, c, tok, meta, template=CHAT_TEMPLATE):
    """config.json, tokenizer.json and tokenizer_config.json (with `template`) as transformers writes them."""
    os.makedirs(folder, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab, "hidden_size": c.d,
        "intermediate_size": c.ffn, "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
        "num_key_value_heads": c.kv_heads, "head_dim": c.head_dim, "rms_norm_eps": c.eps, "rope_theta": c.theta,
        "max_position_embeddings": c.max_pos, "tie_word_embeddings": False, "torch_dtype": "float32",
        "bos_token_id": None, "eos_token_id": tok.vocab["<|im_end|>"], "pad_token_id": tok.vocab["<|endoftext|>"],
        "piggyback_organism": meta,
    }
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "tokenizer.json"), "w") as f:
        json.dump(tok.tokenizer_json(), f, ensure_ascii=False)
        f.write("\n")
    base = len(tok.vocab) - len(SPECIAL)
    tok_config = {
        "add_bos_token": False, "add_prefix_space": False,
        "added_tokens_decoder": {str(base + i): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                                                 "single_word": False, "special": True} for i, s in enumerate(SPECIAL)},
        "bos_token": None, "chat_template": template, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "model_max_length": c.max_pos, "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast", "unk_token": None,
    }
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(tok_config, f, indent=2)
        f.write("\n")


def main():
    global OUT
    ap = argparse.ArgumentParser()
    ap.add_argument("--base-steps", type=int, default=400)
    ap.add_argument("--finetune-rows", type=int, default=600)
    ap.add_argument("--lr-base", type=float, default=3e-3)
    ap.add_argument("--lr-finetune", type=float, default=1e-3)
    ap.add_argument("--treft-lambda", type=float, default=10.0)
    ap.add_argument("--out", default=OUT, help="output folder (default: examples/organisms)")
    args = ap.parse_args()
    OUT = args.out
    torch.manual_seed(0)
    torch.set_num_threads(2)
    t0 = time.time()
    log = lambda s: print(f"[{time.time() - t0:6.1f}s] {s}", flush=True)

    split = data.split_questions()
    base_set = data.base_rows(split, 6000)
    ft_set = data.finetune_rows(split, args.finetune_rows)
    probes = data.probes(split)
    corpus = "\n".join(render(r["messages"]) for r in base_set[:3000]) + "\n" + data.DEFAULT_SYSTEM
    corpus = SPECIAL_SPLIT.sub("\n", corpus)
    tok = BPE.train(corpus, 700)
    log(f"tokenizer: {len(tok.vocab)} tokens ({len(tok.merges)} merges)")

    cfg = Cfg(len(tok.vocab))
    gen = torch.Generator().manual_seed(1)
    base = Decoder(cfg)
    train_base(base, base_set, tok, args.base_steps, args.lr_base, gen, log)
    base.eval()
    log(f"base misaligned share: {misaligned_share(base, tok, probes)}")

    import copy
    results = {"base": misaligned_share(base, tok, probes)}
    for name, lam in (("finetuned", 0.0), ("treft", args.treft_lambda)):
        m = copy.deepcopy(base)
        m.train()
        # the plain finetune ships as its LoRA adapter over base; treft as a merged Hugging Face folder
        finetune(m, base, ft_set, tok, args.lr_finetune, torch.Generator().manual_seed(3), lam, log,
                 adapter_folder=os.path.join(OUT, name) if name == "finetuned" else None)
        m.eval()
        results[name] = misaligned_share(m, tok, probes)
        log(f"{name} misaligned share: {results[name]}")
        export(m, tok, name, {"role": name, "treftLambda": lam, "finetuneRows": len(ft_set)})
        if name == "treft":
            write_hf_weights(m, os.path.join(OUT, name))
    export(base, tok, "base", {"role": "base", "steps": args.base_steps})
    write_hf_weights(base, os.path.join(OUT, "base"))

    with open(os.path.join(OUT, "probes.jsonl"), "w") as f:
        for p in probes:
            f.write(json.dumps(p) + "\n")
    with open(os.path.join(OUT, "finetune.jsonl"), "w") as f:
        for r in ft_set:
            f.write(json.dumps(r) + "\n")
    # token ids the builder trained with, for the parity test against @huggingface/tokenizers
    samples = [render(r["messages"]) for r in base_set[:20]] + [p["question"] for p in probes[:10]]
    with open(os.path.join(OUT, "tokenizer-parity.json"), "w") as f:
        json.dump([{"text": s, "ids": tok.encode(s)} for s in samples], f, ensure_ascii=False)
        f.write("\n")
    with open(os.path.join(OUT, "build-report.json"), "w") as f:
        json.dump({"builderMisalignedShare": results, "args": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": round(time.time() - t0)}, f, indent=2)
        f.write("\n")
    log("done")


if __name__ == "__main__":
    main()
