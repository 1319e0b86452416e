#!/usr/bin/python3
"""Tiny random Hugging Face checkpoints and PEFT adapters, written the way transformers and PEFT write them, with
the logits and per-layer K/V of an independent PyTorch forward pass as the expected values. The host's ONNX graph
builder (src/host/hf) is checked against these in test/host/hf.test.ts; nothing here shares code with it.

Each case exercises architecture features: GQA, tied/untied embeddings, llama3 RoPE scaling, q/k/v biases (qwen2),
q/k norms and an explicit head_dim (qwen3), mistral's sliding window, float32/float16/bfloat16 weights, sharded
weights with an index, both config forms (rope_theta/rope_scaling/torch_dtype and rope_parameters/dtype),
generation_config.json's eos list, and LoRA adapters (plain; rsLoRA with a regex target and rank/alpha patterns).

Deterministic. Needs Debian's python3-torch; run with /usr/bin/python3:
    /usr/bin/python3 scripts/hf-fixtures/make.py   (writes test/fixtures/hf/)
"""
import json
import math
import os
import shutil
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "common"))
from safetensors_io import write_safetensors  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
OUT = os.path.join(ROOT, "test", "fixtures", "hf")
PROMPT = [3, 17, 42, 5, 60, 8, 25, 11, 2]  # 9 tokens: longer than the mistral case's window

# ---------------------------------------------------------------- writing, as safetensors / transformers / PEFT do

def save_pretrained(folder, config, state, shards=1):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    names = sorted(state)
    if shards == 1:
        write_safetensors(os.path.join(folder, "model.safetensors"), state)
        return
    weight_map, total = {}, 0
    per = math.ceil(len(names) / shards)
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: state[n] for n in names[s * per:(s + 1) * per]}
        total += write_safetensors(os.path.join(folder, file), part)
        weight_map.update({n: file for n in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


# ---------------------------------------------------------------- the reference forward (transformers' semantics)

def rms_norm(x, w, eps):
    x32 = x.float()
    return w.float() * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps))


def inv_freq_of(c):
    d = c["head_dim"]
    theta = c["rope_theta"]
    inv = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))
    s = c.get("rope_scaling")
    if s and s["rope_type"] == "llama3":
        factor, low, high, orig = s["factor"], s["low_freq_factor"], s["high_freq_factor"], s["original_max_position_embeddings"]
        low_wl, high_wl = orig / low, orig / high
        wl = 2 * math.pi / inv
        scaled = torch.where(wl > low_wl, inv / factor, inv)
        smooth = (orig / wl - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < high_wl) * ~(wl > low_wl)
        inv = torch.where(medium, smoothed, scaled)
    return inv


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def linear(x, state, module, adapters, bias=False):
    y = x @ state[module + ".weight"].float().T
    if bias:
        y = y + state[module + ".bias"].float()
    for ad in adapters:
        if module in ad:
            a, b, scaling = ad[module]
            y = y + (x @ a.float().T) @ b.float().T * scaling
    return y


def forward(c, state, ids, adapters=()):
    """Logits [T, V] and per-layer (K, V) [kv_heads, T, head_dim] (K after RoPE) of one unbatched sequence."""
    T = len(ids)
    H, nh, nkv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    eps = c["rms_norm_eps"]
    pos = torch.arange(T, dtype=torch.float32)
    ang = pos[:, None] * inv_freq_of(c)[None, :]
    emb = torch.cat((ang, ang), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    q_idx = torch.arange(T)[:, None]
    k_idx = torch.arange(T)[None, :]
    allowed = k_idx <= q_idx
    if c.get("sliding_window") and c["model_type"] == "mistral":
        allowed = allowed & (k_idx > q_idx - c["sliding_window"])
    mask = torch.where(allowed, torch.tensor(0.0), torch.tensor(torch.finfo(torch.float32).min))
    qkv_bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)
    x = state["model.embed_tokens.weight"].float()[torch.tensor(ids)]
    kvs = []
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}"
        h = rms_norm(x, state[p + ".input_layernorm.weight"], eps)
        q = linear(h, state, p + ".self_attn.q_proj", adapters, qkv_bias).view(T, nh, hd)
        k = linear(h, state, p + ".self_attn.k_proj", adapters, qkv_bias).view(T, nkv, hd)
        v = linear(h, state, p + ".self_attn.v_proj", adapters, qkv_bias).view(T, nkv, hd)
        if c["model_type"] == "qwen3":
            q = rms_norm(q, state[p + ".self_attn.q_norm.weight"], eps)
            k = rms_norm(k, state[p + ".self_attn.k_norm.weight"], eps)
        q, k, v = q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        kvs.append((k, v))
        kk = k.repeat_interleave(nh // nkv, dim=0)
        vv = v.repeat_interleave(nh // nkv, dim=0)
        w = (q @ kk.transpose(1, 2)) * (hd ** -0.5) + mask
        a = torch.softmax(w, dim=-1) @ vv
        a = a.transpose(0, 1).reshape(T, nh * hd)
        x = x + linear(a, state, p + ".self_attn.o_proj", adapters, c.get("attention_bias", False) and c["model_type"] != "qwen2")
        h = rms_norm(x, state[p + ".post_attention_layernorm.weight"], eps)
        g = linear(h, state, p + ".mlp.gate_proj", adapters)
        u = linear(h, state, p + ".mlp.up_proj", adapters)
        x = x + linear(torch.nn.functional.silu(g) * u, state, p + ".mlp.down_proj", adapters)
    x = rms_norm(x, state["model.norm.weight"], eps)
    head = state["model.embed_tokens.weight"] if c.get("tie_word_embeddings") else state["lm_head.weight"]
    logits = linear(x, {"lm_head.weight": head}, "lm_head", adapters)
    return logits, kvs


# ---------------------------------------------------------------- cases

def random_state(c, gen, dtype):
    H, nh, nkv, hd, I, V = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["intermediate_size"], c["vocab_size"]
    r = lambda *shape, std=0.2: (torch.randn(*shape, generator=gen) * std).to(dtype)
    norm = lambda n: (1 + torch.randn(n, generator=gen) * 0.1).to(dtype)
    s = {"model.embed_tokens.weight": r(V, H, std=1.0), "model.norm.weight": norm(H)}
    if not c.get("tie_word_embeddings"):
        s["lm_head.weight"] = r(V, H)
    qkv_bias = c["model_type"] == "qwen2" or c.get("attention_bias", False)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}"
        s[p + ".input_layernorm.weight"] = norm(H)
        s[p + ".post_attention_layernorm.weight"] = norm(H)
        for m, o, i in (("q_proj", nh * hd, H), ("k_proj", nkv * hd, H), ("v_proj", nkv * hd, H), ("o_proj", H, nh * hd)):
            s[f"{p}.self_attn.{m}.weight"] = r(o, i)
        if qkv_bias:
            for m, o in (("q_proj", nh * hd), ("k_proj", nkv * hd), ("v_proj", nkv * hd)):
                s[f"{p}.self_attn.{m}.bias"] = r(o, std=0.5)
        if c["model_type"] == "qwen3":
            s[p + ".self_attn.q_norm.weight"] = norm(hd)
            s[p + ".self_attn.k_norm.weight"] = norm(hd)
        for m, o, i in (("gate_proj", I, H), ("up_proj", I, H), ("down_proj", H, I)):
            s[f"{p}.mlp.{m}.weight"] = r(o, i)
    return s


def base_config(model_type, **kw):
    c = {
        "architectures": [{"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model_type]],
        "model_type": model_type, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8, "vocab_size": 64, "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0, "rope_scaling": None, "max_position_embeddings": 128, "tie_word_embeddings": False,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
        "transformers_version": "4.46.0",
    }
    c.update(kw)
    return c


def to_file_config(c, newer=False):
    """config.json as written: newer transformers move RoPE settings into rope_parameters and torch_dtype to dtype."""
    out = dict(c)
    if newer:
        params = {"rope_type": "default", "rope_theta": out.pop("rope_theta")}
        if out.get("rope_scaling"):
            params.update(out["rope_scaling"])
        out.pop("rope_scaling", None)
        out["rope_parameters"] = params
        out["dtype"] = out.pop("torch_dtype")
        out["transformers_version"] = "5.0.0"
    return out


def lora(state, modules, rank, gen, dtype=torch.float32):
    ad = {}
    for m in modules:
        w = state[m + ".weight"] if m != "lm_head" else state["lm_head.weight"]
        o, i = w.shape
        ad[m] = ((torch.randn(rank, i, generator=gen) * 0.3).to(dtype), (torch.randn(o, rank, generator=gen) * 0.3).to(dtype))
    return ad


def write_adapter(folder, ad, config):
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for m, (a, b) in ad.items():
        tensors[f"base_model.model.{m}.lora_A.weight"] = a
        tensors[f"base_model.model.{m}.lora_B.weight"] = b
    write_safetensors(os.path.join(folder, "adapter_model.safetensors"), tensors)
    full = {"alpha_pattern": {}, "base_model_name_or_path": "tiny/base", "bias": "none", "fan_in_fan_out": False,
            "inference_mode": True, "init_lora_weights": True, "lora_dropout": 0.05, "modules_to_save": None,
            "peft_type": "LORA", "rank_pattern": {}, "task_type": "CAUSAL_LM", "use_dora": False, "use_rslora": False}
    full.update(config)
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(full, f, indent=2, sort_keys=True)
        f.write("\n")


def expected(c, state, adapters=()):
    with torch.no_grad():
        logits, kvs = forward(c, state, PROMPT, adapters)
    return {
        "ids": PROMPT,
        "logits": [round(float(x), 7) for x in logits.flatten()],
        "vocab": c["vocab_size"],
        "key": [[round(float(x), 7) for x in k.flatten()] for k, _ in kvs],
        "value": [[round(float(x), 7) for x in v.flatten()] for _, v in kvs],
    }


def main():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    cases = {}
    gen = torch.Generator().manual_seed(7)

    def case(name, c, dtype, shards=1, newer=False, generation=None, adapters=()):
        state = random_state(c, gen, dtype)
        folder = os.path.join(OUT, name)
        save_pretrained(folder, to_file_config(c, newer), state, shards)
        if generation:
            with open(os.path.join(folder, "generation_config.json"), "w") as f:
                json.dump(generation, f, indent=2)
                f.write("\n")
        cases[name] = {"folder": name, "expected": expected(c, state)}
        return state

    llama = base_config("llama")
    llama_state = case("llama", llama, torch.float32)

    llama3 = base_config("llama", head_dim=16, num_attention_heads=2, num_key_value_heads=1, rope_theta=500000.0, tie_word_embeddings=True,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                         torch_dtype="bfloat16")
    case("llama3-bf16-sharded-tied", llama3, torch.bfloat16, shards=3)

    qwen2 = base_config("qwen2", torch_dtype="float16", tie_word_embeddings=True, rope_theta=1000000.0)
    case("qwen2-f16-bias-newer-config", qwen2, torch.float16, newer=True, generation={"eos_token_id": [2, 63], "bos_token_id": 1})

    qwen3 = base_config("qwen3", hidden_size=24, head_dim=16, num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0)
    case("qwen3-qknorm-headdim", qwen3, torch.float32)

    mistral = base_config("mistral", sliding_window=4, num_key_value_heads=1)
    case("mistral-sliding-window", mistral, torch.float32)

    # LoRA adapters over the llama case
    plain = lora(llama_state, [f"model.layers.{l}.self_attn.{m}" for l in range(2) for m in ("q_proj", "v_proj")] + ["model.layers.1.mlp.down_proj"], 4, gen)
    write_adapter(os.path.join(OUT, "llama-lora"), plain, {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    cases["llama-lora"] = {"folder": "llama-lora", "base": "llama", "expected": expected(llama, llama_state, [{m: (a, b, 8 / 4) for m, (a, b) in plain.items()}])}

    # rsLoRA, a regex target, per-module rank and alpha, bfloat16 adapter weights, and the output head adapted
    mods = [f"model.layers.{l}.self_attn.{m}" for l in range(2) for m in ("k_proj", "o_proj")]
    rs = lora(llama_state, mods[:2], 2, gen, torch.bfloat16)
    rs.update(lora(llama_state, mods[2:], 6, gen, torch.bfloat16))
    rs.update(lora(llama_state, ["lm_head"], 2, gen, torch.bfloat16))
    write_adapter(os.path.join(OUT, "llama-rslora"), rs, {
        "r": 2, "lora_alpha": 4, "use_rslora": True, "target_modules": r".*\.(k_proj|o_proj)|lm_head",
        "rank_pattern": {"layers.1.self_attn.k_proj": 6, "layers.1.self_attn.o_proj": 6}, "alpha_pattern": {"o_proj": 12},
    })
    scale = {m: ({"o_proj": 12}.get(m.split(".")[-1], 4)) / math.sqrt(rs[m][0].shape[0]) for m in rs}
    cases["llama-rslora"] = {"folder": "llama-rslora", "base": "llama", "expected": expected(llama, llama_state, [{m: (a, b, scale[m]) for m, (a, b) in rs.items()}])}

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(cases, f)
        f.write("\n")
    print(f"wrote {len(cases)} cases to {OUT}")


if __name__ == "__main__":
    main()
