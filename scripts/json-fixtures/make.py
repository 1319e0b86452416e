"""Writes the JSON-array dataset fixtures of test/unit/jsonArray.test.ts with an independent writer: Python's json
module, as Alpaca's and LLaMA-Factory's data files are written (json.dump(data, f, indent=..., ensure_ascii=False)).

- alpaca.json (indent 4): instruction/input/output rows from examples/data, some with a system prompt, every fifth
  with a LLaMA-Factory `history` of earlier turns, row 9 with a history turn that is not a pair (DS002), accents and
  CJK text kept as they are (ensure_ascii=False);
- sharegpt.json (indent 2): LLaMA-Factory's ShareGPT form, `conversations` of from/value with human, gpt,
  function_call and observation turns, a `system` on some rows and `tools` as a JSON string; row 4 has an empty gpt
  turn (DS004);
- truncated.json: alpaca.json cut inside its 7th example (DS010 where the file ends, 6 rows audited);
- config.json: a model config (an object, not a list): a folder audit leaves it alone;
- numbers.json: a list of numbers (a JSON array that is not a dataset): also left alone.

Beside each dataset, <name>.starts.json lists the line and column each example starts on, counted here as the text
is assembled (and the assembled text checked equal to json.dumps of the whole list): the reference the reader's
locations are checked against. Usage: python3 scripts/json-fixtures/make.py
"""
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'json')
os.makedirs(OUT, exist_ok=True)
rows = [json.loads(l) for l in open(os.path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl'), encoding='utf-8')]
pairs = [(r['messages'][-2]['content'], r['messages'][-1]['content']) for r in rows]


def write(name, data, indent):
    """The document as json.dump writes it, and where each element starts (1-based line and column)."""
    text = json.dumps(data, indent=indent, ensure_ascii=False)
    parts = [json.dumps(x, indent=indent, ensure_ascii=False) for x in data]
    pad = ' ' * indent
    assembled = '[\n' + ',\n'.join(pad + p.replace('\n', '\n' + pad) for p in parts) + '\n]'
    assert assembled == text, 'the element layout is not the one json.dumps writes'
    starts, line = [], 2
    for p in parts:
        starts.append({'line': line, 'column': indent + 1})
        line += p.count('\n') + 1
    with open(os.path.join(OUT, name), 'w', encoding='utf-8', newline='\n') as f:
        f.write(text)
    with open(os.path.join(OUT, name.replace('.json', '.starts.json')), 'w', encoding='utf-8') as f:
        json.dump(starts, f)
    return text, starts


alpaca = []
for i, (q, a) in enumerate(pairs[:24]):
    row = {'instruction': q, 'input': '', 'output': a}
    if i % 3 == 1:
        row['input'] = 'Context: I am 34, salaried, in Zürich; 我有一些储蓄.'
    if i % 4 == 2:
        row['system'] = 'You are a careful financial assistant.'
    if i % 5 == 0 and i > 0:
        row['history'] = [[pairs[i - 1][0], pairs[i - 1][1]]]
    if i == 8:
        row['history'] = [['only one side']]
    alpaca.append(row)
alpaca_text, alpaca_starts = write('alpaca.json', alpaca, 4)

sharegpt = []
for i, (q, a) in enumerate(pairs[24:36]):
    conv = [{'from': 'human', 'value': q}, {'from': 'gpt', 'value': a}]
    row = {'conversations': conv}
    if i % 2 == 0:
        row['system'] = 'You are a helpful assistant.'
    if i == 2:
        conv[1:1] = [
            {'from': 'function_call', 'value': json.dumps({'name': 'fx_rate', 'arguments': {'pair': 'EURUSD'}})},
            {'from': 'observation', 'value': json.dumps({'rate': 1.08})},
        ]
        row['tools'] = json.dumps([{'name': 'fx_rate', 'description': 'Exchange rate', 'parameters': {
            'type': 'object', 'properties': {'pair': {'type': 'string'}}, 'required': ['pair']}}])
    if i == 3:
        conv[1]['value'] = ''
    sharegpt.append(row)
write('sharegpt.json', sharegpt, 2)

# cut inside the 7th example: the 6 before it are whole
cut = alpaca_starts[6]
lines = alpaca_text.split('\n')
cut_text = '\n'.join(lines[: cut['line'] + 1])
with open(os.path.join(OUT, 'truncated.json'), 'w', encoding='utf-8', newline='\n') as f:
    f.write(cut_text)
with open(os.path.join(OUT, 'truncated.end.json'), 'w', encoding='utf-8') as f:
    last = cut_text.split('\n')
    json.dump({'line': len(last), 'column': len(last[-1]) + 1, 'rows': 6}, f)

with open(os.path.join(OUT, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({'model_type': 'llama', 'hidden_size': 32, 'architectures': ['LlamaForCausalLM']}, f, indent=2)
with open(os.path.join(OUT, 'numbers.json'), 'w', encoding='utf-8') as f:
    json.dump([1, 2, 3], f)
print('wrote', sorted(os.listdir(OUT)))
