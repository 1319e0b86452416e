#!/usr/bin/env python3
"""
Writes test/fixtures/inspect/eval-log.schema.json: the JSON Schema of an Inspect AI eval log (.json) as Inspect's
own reader sees it, derived from its pydantic models (EvalLog.model_validate is what read_eval_log runs on a .json
log). A field without a default is required; every declared field is named, and no other is allowed (pydantic
would silently drop a misspelt field: a lost value). Field types are mapped where they are plain (str, int,
float, bool, Literal, lists and dicts of them, the models below); the rest are left open.

Usage: /usr/bin/python3 scripts/inspect-log-schema.py <inspect_ai checkout> <commit> > test/fixtures/inspect/eval-log.schema.json
(the checkout is a git directory: `fetch` github:UKGovernmentBEIS/inspect_ai). Needs nothing beyond the standard
library: the models are read as source, not imported.
"""
import json
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


classes = {}  # name -> (bases, [(field, annotation or None when multi-line, has_default)])
aliases = {}  # EvalStatus = Literal["started", ...]: a one-line alias of a Literal
for f in FILES:
    current = None
    for line in source(f).splitlines():
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
        if rest.rstrip() == "(":  # a multi-line annotation: its default is on a later line
            classes[current][1].append((name, None, True))
            continue
        ann, _, default = rest.partition(" = ")
        classes[current][1].append((name, ann.strip(), bool(default)))


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


defs = {}
for name in MODELS:
    fs = fields(name)
    defs[name] = {
        "type": "object",
        "properties": {f: schema(ann) for f, ann, _ in fs},
        "required": [f for f, _, has_default in fs if not has_default],
        "additionalProperties": False,
    }
print(json.dumps({
    "$comment": f"Inspect AI eval log (.json) as its reader (EvalLog.model_validate) sees it, from the pydantic "
                f"models of UKGovernmentBEIS/inspect_ai at {commit}; written by scripts/inspect-log-schema.py",
    "$ref": "#/$defs/EvalLog",
    "$defs": defs,
}, indent=1))
