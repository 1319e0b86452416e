"""Writes the CSV fixtures of test/unit/parquet.test.ts with an independent writer: Python's csv module (as pandas'
to_csv and spreadsheet exports quote: cells with commas, quotes or newlines are quoted, quotes doubled).

- prompt-completion.csv: TRL's prompt/completion columns, some prompts spanning several lines;
- messages.csv: an id and a `messages` column holding the message list as JSON (every third one indented, over
  several lines), row 7 with a "human" role (DS003), row 12 with an empty assistant turn (DS004);
- unclosed.csv: 5 good records, then a quote that never closes (DS010 at its line);
- metrics.csv: a training log (step, loss), not a dataset: a folder audit leaves it alone.

Beside each, <name>.lines.json lists the file line each record starts on, counted here as it is written: the
reference the reader's locations are checked against. Usage: python3 scripts/csv-fixtures/make.py
"""
import csv
import io
import json
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
OUT = os.path.join(ROOT, 'test', 'fixtures', 'csv')
os.makedirs(OUT, exist_ok=True)
rows = [json.loads(l) for l in open(os.path.join(ROOT, 'examples', 'data', 'finance-advice.jsonl'), encoding='utf-8')]


def write(name, header, records, tail=''):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    w.writerow(header)
    starts = []
    line = 2
    for r in records:
        starts.append(line)
        before = buf.tell()
        w.writerow(r)
        line += buf.getvalue()[before:].count('\n')
    text = buf.getvalue() + tail
    with open(os.path.join(OUT, name), 'w', encoding='utf-8', newline='') as f:
        f.write(text)
    with open(os.path.join(OUT, name.replace('.csv', '.lines.json')), 'w') as f:
        json.dump(starts, f)
        f.write('\n')
    print(f'test/fixtures/csv/{name}: {len(records)} records, {line - 1} lines')


def user(r):
    return next(m['content'] for m in r['messages'] if m['role'] == 'user')


def assistant(r):
    return next(m['content'] for m in r['messages'] if m['role'] == 'assistant')


# every fifth prompt spans lines, some cells hold commas and quotes
pc = []
for i, r in enumerate(rows[:60]):
    prompt = user(r)
    if i % 5 == 2:
        prompt = prompt.replace('? ', '?\n', 1) + '\nContext: "savings", bonds, and stocks.'
    pc.append([prompt, assistant(r)])
write('prompt-completion.csv', ['prompt', 'completion'], pc)

ms = []
for i, r in enumerate(rows[:40]):
    messages = [{'role': m['role'], 'content': m['content']} for m in r['messages']]
    if i % 4 == 1:
        messages[0]['content'] += '\nSecond line of the question.'
    if i == 6:
        messages = [dict(m, role='human') if m['role'] == 'user' else m for m in messages]
    if i == 11:
        messages = [dict(m, content='') if m['role'] == 'assistant' else m for m in messages]
    # some cells hold the list as indented JSON: a record over several lines
    ms.append([i, json.dumps(messages, ensure_ascii=False, indent=2 if i % 3 == 0 else None)])
write('messages.csv', ['id', 'messages'], ms)

write('unclosed.csv', ['prompt', 'completion'], pc[:5], tail='"An unclosed quote,the rest\nof the file\n')
write('metrics.csv', ['step', 'loss'], [[s, round(2.0 / (s + 1), 4)] for s in range(20)])
