#!/usr/bin/env python3
"""
Writes test/fixtures/inspect/eval-log.schema.json: the JSON Schema of an Inspect AI eval log (.json) as Inspect's
own reader sees it, derived from its pydantic models (EvalLog.model_validate is what read_eval_log runs on a .json
log). A field without a default is required; every declared field is named, and no other is allowed (pydantic
would silently drop a misspelt field: a lost value). Field types are mapped where they are plain (str, int,
float, bool, Literal, lists and dicts of them, the models below); the rest are left open.

Also writes src/app/eval/inspectModels.json: each model's fields in declaration order with their defaults, so that
the product writes every field as Inspect's own writer (pydantic's model_dump) does.

Usage: /usr/bin/python3 scripts/inspect-log-schema.py <inspect_ai checkout> <commit>
(the checkout is a git directory: `fetch` github:UKGovernmentBEIS/inspect_ai). Needs nothing beyond the standard
library: the models are read as source, not imported.
"""
import json
import os
import re
import subprocess
import sys

repo, commit = sys.argv[1], sys.argv[2]

FILES = [
    "src/inspect_ai/log/_log.py",
    "src/inspect_ai/model/_model_output.py",
    "src/inspect_ai/model/_chat_message.py",
    "src/inspect_ai/model/_generate_config.py",
    "src/inspect_ai/scorer/_metric.py",
    "src/inspect_ai/_util/error.py",
]
MODELS = [
    "EvalLog", "EvalSpec", "EvalDataset", "EvalConfig", "EvalRevision", "EvalPlan", "EvalPlanStep", "GenerateConfig",
    "EvalResults", "EvalScore", "EvalMetric", "EvalStats", "ModelUsage", "EvalError", "EvalSample", "Score",
    "ModelOutput", "ChatCompletionChoice", "ChatMessageSystem", "ChatMessageUser", "ChatMessageAssistant", "ChatMessageTool",
]
# the union the models name ChatMessage (a role tells them apart)
UNIONS = {"ChatMessage": ["ChatMessageSystem", "ChatMessageUser", "ChatMessageAssistant", "ChatMessageTool"]}


def source(path):
    return subprocess.run(["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


classes = {}  # name -> (bases, [(field, annotation or None when multi-line, has_default, default expression)])
aliases = {}  # EvalStatus = Literal["started", ...]: a one-line alias of a Literal
for f in FILES:
    current = None
    text_lines = source(f).splitlines()
    for n, line in enumerate(text_lines):
        m = re.match(r"^(\w+) = (Literal\[.*\])$", line)
        if m:
            aliases[m.group(1)] = m.group(2)
        m = re.match(r"^class (\w+)\(([^)]*)\):", line)
        if m:
            current = m.group(1)
            classes[current] = ([b.strip() for b in m.group(2).split(",")], [])
            continue
        if line and not line.startswith((" ", "#", ")")):
            current = None
            continue
        if current is None:
            continue
        m = re.match(r"^    ([a-z_][a-z0-9_]*): (.*)$", line)
        if not m or m.group(1) == "model_config" or m.group(1).startswith("_"):
            continue
        name, rest = m.group(1), m.group(2)
        if rest.startswith("ClassVar") or rest.startswith("PrivateAttr"):
            continue
        if rest.rstrip() == "(":  # a multi-line annotation: its default follows its closing parenthesis
            k = n + 1
            while k < len(text_lines) and not re.match(r"^\s*\)", text_lines[k]):
                k += 1
            after = re.match(r"^\s*\)\s*=\s*(.*)$", text_lines[k]) if k < len(text_lines) else None
            classes[current][1].append((name, None, after is not None, after.group(1) if after else None))
            continue
        ann, _, default = rest.partition(" = ")
        # a default written over several lines: `Field(\n default=None\n)`
        k = n
        while default and default.count("(") > default.count(")") and k + 1 < len(text_lines):
            k += 1
            default += " " + text_lines[k].strip()
        classes[current][1].append((name, ann.strip(), bool(default), default.strip() or None))


def fields(name):
    bases, own = classes[name]
    out = []
    for b in bases:
        if b in classes:
            out += fields(b)
    names = {f[0] for f in own}
    return [f for f in out if f[0] not in names] + own


def split_top(s, sep):
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += ch in "[(" and 1 or ch in "])" and -1 or 0
        if ch == sep and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return parts + [cur.strip()]


def schema(ann):
    if ann is None:
        return {}
    alts = split_top(ann, "|")
    if len(alts) > 1:
        return {"anyOf": [schema(a) for a in alts]}
    a = ann.strip()
    plain = {"str": "string", "int": "integer", "float": "number", "bool": "boolean", "None": "null",
             "UtcDatetimeStr": "string"}
    if a in plain:
        return {"type": plain[a]}
    if a in aliases:
        return schema(aliases[a])
    if a in MODELS:
        return {"$ref": f"#/$defs/{a}"}
    if a in UNIONS:
        return {"anyOf": [{"$ref": f"#/$defs/{m}"} for m in UNIONS[a]]}
    m = re.match(r"^Literal\[(.*)\]$", a)
    if m:
        return {"enum": [json.loads(v.replace("'", '"')) for v in split_top(m.group(1), ",")]}
    m = re.match(r"^list\[(.*)\]$", a)
    if m:
        return {"type": "array", "items": schema(m.group(1))}
    m = re.match(r"^dict\[str, (.*)\]$", a)
    if m:
        return {"type": "object", "additionalProperties": schema(m.group(1))}
    return {}


def default_of(expr):
    """A field's default as pydantic writes it (model_dump): a JSON value, {"$model": name}, or None when unknown."""
    if expr is None:
        return None
    m = re.match(r"^Field\((.*)\)$", expr, re.S)
    inner = m.group(1) if m else expr
    m = re.search(r"default_factory=(\w+)", inner)
    if m:
        factory = m.group(1)
        return {"str": {"value": ""}, "dict": {"value": {}}, "list": {"value": []}}.get(
            factory, {"model": factory} if factory in MODELS else None)
    m = re.search(r"default=(.*?)(,\s*\w+=|$)", inner, re.S) if m is None and inner.startswith("default") or "default=" in inner else None
    value = (m.group(1) if m else inner).strip().rstrip(",")
    call = re.match(r"^(\w+)\(\)$", value)
    if call and call.group(1) in MODELS:
        return {"model": call.group(1)}
    try:
        return {"value": json.loads(value.replace("None", "null").replace("True", "true").replace("False", "false").replace("'", '"'))}
    except ValueError:
        return None


defs = {}
for name in MODELS:
    fs = fields(name)
    defs[name] = {
        "type": "object",
        "properties": {f: schema(ann) for f, ann, _, _ in fs},
        "required": [f for f, _, has_default, _ in fs if not has_default],
        "additionalProperties": False,
    }
    # pydantic writes every field, in declaration order, defaults included: what Inspect's own logs hold
    defaults = {}
    for f, _, has_default, expr in fs:
        if has_default and not f.startswith("_") and not (name == "EvalLog" and f in ("location", "etag")):
            d = default_of(expr)
            if d is not None:
                defaults[f] = d
    defs[name]["x-defaults"] = defaults
    # EvalLog's location and etag are excluded from its dump (exclude=True): where a log was read from
    defs[name]["x-order"] = [f for f, _, _, _ in fs if not (name == "EvalLog" and f in ("location", "etag"))]
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
origin = f"the pydantic models of UKGovernmentBEIS/inspect_ai at {commit}; written by scripts/inspect-log-schema.py"
with open(os.path.join(ROOT, "test", "fixtures", "inspect", "eval-log.schema.json"), "w", encoding="utf-8") as f:
    json.dump({
        "$comment": f"Inspect AI eval log (.json) as its reader (EvalLog.model_validate) sees it, from {origin}",
        "$ref": "#/$defs/EvalLog",
        "$defs": {k: {x: y for x, y in v.items() if not x.startswith("x-")} for k, v in defs.items()},
    }, f, indent=1)
    f.write("\n")
# what the product writes: each model's fields in declaration order with their defaults, as pydantic dumps them
with open(os.path.join(ROOT, "src", "app", "eval", "inspectModels.json"), "w", encoding="utf-8") as f:
    json.dump({"$comment": f"Inspect AI log models: field order and defaults, from {origin}",
               "models": {k: {"order": v["x-order"], "defaults": v["x-defaults"]} for k, v in defs.items()}}, f, indent=1)
    f.write("\n")
