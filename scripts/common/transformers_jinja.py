"""Jinja2 set up as transformers' apply_chat_template runs it: a sandboxed environment with trim_blocks and
lstrip_blocks, loopcontrols (and any other extensions given), tojson without ASCII escaping, raise_exception, and
strftime_now on a fixed clock; and the special tokens a tokenizer_config.json passes to the template. Shared by the
fixture scripts that render templates with Jinja2 itself (scripts/jinja-fixtures, scripts/generation-fixtures).
"""
import json

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def environment(clock, extensions=()):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[*extensions, loopcontrols])
    env.filters['tojson'] = tojson
    env.globals['raise_exception'] = raise_exception
    env.globals['strftime_now'] = lambda fmt: clock.strftime(fmt)
    return env


def special_tokens(config):
    out = {}
    for key in ('bos_token', 'eos_token', 'unk_token', 'pad_token'):
        v = config.get(key)
        if isinstance(v, dict):
            v = v.get('content')
        if isinstance(v, str):
            out[key] = v
    return out
