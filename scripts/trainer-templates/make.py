"""The built-in chat templates of the training frameworks Piggyback Lens reads configs of, as Jinja, with their
version and commit: src/domain/trainers/builtinTemplates.json.

- axolotl: `chat_template: <name>` picks src/axolotl/utils/chat_templates/templates/<name>.jinja; taken as is.
- LLaMA-Factory: `template: <name>` picks a register_template(...) call of src/llamafactory/data/template.py, which
  is Python (slots of strings and special tokens), not Jinja. Each call is read with Python's ast (never imported)
  and written as the Jinja of what its Template._encode renders: turn 0 gets the prefix and the system block (the
  message's, else the template's default_system), user turns their slot with {{content}} (and {{idx}}), assistant
  turns theirs; Llama2Template fuses the system block into the first user turn; a ReasoningTemplate puts its empty
  thought (<think>\\n\\n</think>\\n\\n) before an assistant answer that has none, as it does in training with
  enable_thinking on (its default). Special-token slots become bos_token / eos_token (the stop word when the
  template replaces EOS); {"token": t} becomes t. Tool and observation formats are left out (not rendered here).
  Templates of other classes are listed with the reason they are left out.

Usage: /usr/bin/python3 scripts/trainer-templates/make.py <axolotl git dir> <LLaMA-Factory git dir>
(the git directories `fetch` brings: github:axolotl-ai-cloud/axolotl, github:hiyouga/LLaMA-Factory).
"""
import ast
import json
import os
import re
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))


def git(repo, *args):
    return subprocess.run(['git', '-C', repo, *args], check=True, capture_output=True, text=True).stdout


def axolotl(repo):
    folder = 'src/axolotl/utils/chat_templates/templates'
    names = [n for n in git(repo, 'ls-tree', '--name-only', 'HEAD', folder + '/').split() if n.endswith('.jinja')]
    return {
        'version': git(repo, 'show', 'HEAD:VERSION').strip(),
        'commit': git(repo, 'rev-parse', 'HEAD').strip(),
        'source': folder,
        'templates': {os.path.basename(n)[:-6]: {'jinja': git(repo, 'show', 'HEAD:' + n)} for n in sorted(names)},
    }


def jinja_string(s):
    return "'" + s.replace('\\', '\\\\').replace("'", "\\'").replace('\n', '\\n') + "'"


def slots_expr(slots, stop_words, replace_eos, placeholder='content'):
    """A Jinja expression concatenating `slots`, `{{content}}` (and `{{idx}}`) filled in."""
    items = []
    for slot in slots:
        if isinstance(slot, str):
            for piece in re.split(r'(\{\{content\}\}|\{\{idx\}\})', slot):
                if piece == '{{content}}':
                    items.append(placeholder)
                elif piece == '{{idx}}':
                    items.append('((loop.index0 // 2) | string)')
                elif piece:
                    items.append(jinja_string(piece))
        elif isinstance(slot, set):
            if 'bos_token' in slot:
                items.append("(bos_token or '')")
            elif 'eos_token' in slot:
                items.append(jinja_string(stop_words[0]) if replace_eos and stop_words else "(eos_token or '')")
        elif isinstance(slot, dict):
            items.append(jinja_string(slot['token']))
    return ' + '.join(items) or "''"


def formatter_slots(node):
    """The slots of StringFormatter(slots=[...]) / EmptyFormatter(slots=[...]) (or its first positional)."""
    if not isinstance(node, ast.Call):
        return None
    for kw in node.keywords:
        if kw.arg == 'slots':
            return ast.literal_eval(kw.value)
    if node.args:
        value = ast.literal_eval(node.args[0])
        return value if isinstance(value, list) else [value]
    return None


def llama_factory(repo):
    source = git(repo, 'show', 'HEAD:src/llamafactory/data/template.py')
    version = re.search(r'VERSION = "([^"]+)"', git(repo, 'show', 'HEAD:src/llamafactory/extras/env.py')).group(1)
    templates, left_out = {}, {}
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and getattr(node.func, 'id', None) == 'register_template'):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        name = ast.literal_eval(kw['name'])
        cls = getattr(kw.get('template_class'), 'id', 'Template')
        if cls not in ('Template', 'Llama2Template', 'ReasoningTemplate'):
            left_out[name] = f'{cls}: its own encoding is not rendered here'
            continue
        try:
            lit = lambda k, d: ast.literal_eval(kw[k]) if k in kw else d
            efficient_eos = lit('efficient_eos', False)
            replace_eos = lit('replace_eos', False)
            stop_words = lit('stop_words', [])
            default_system = lit('default_system', '')
            default_assistant = ['{{content}}'] if efficient_eos else ['{{content}}', {'eos_token'}]
            user = formatter_slots(kw.get('format_user')) or ['{{content}}']
            assistant = formatter_slots(kw.get('format_assistant')) or default_assistant
            system = formatter_slots(kw.get('format_system')) or user
            prefix = formatter_slots(kw.get('format_prefix')) or []
            thought = lit('thought_words', ['<think>\n', '\n</think>\n\n'])
        except (ValueError, KeyError) as e:
            left_out[name] = f'not a literal template ({e})'
            continue
        sys_expr = slots_expr(system, stop_words, replace_eos, placeholder='system_message')
        j = ''
        if prefix:
            j += '{{ ' + slots_expr(prefix, stop_words, replace_eos) + ' }}'
        if default_system:
            j += '{% set system_message = ' + jinja_string(default_system) + ' %}'
        j += ("{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
              "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% endif %}")
        if cls != 'Llama2Template':
            j += '{% if system_message is defined and system_message %}{{ ' + sys_expr + ' }}{% endif %}'
        j += '{% for message in loop_messages %}'
        if cls == 'Llama2Template':
            j += ("{% if loop.index0 == 0 and system_message is defined and system_message %}{% set content = "
                  + sys_expr + " + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}")
        else:
            j += "{% set content = message['content'] %}"
        if cls == 'ReasoningTemplate':
            j += ("{% if message['role'] == 'assistant' and " + jinja_string(thought[0].strip()) + " not in content and "
                  + jinja_string(thought[1].strip()) + " not in content %}{% set content = "
                  + jinja_string(thought[0] + thought[1]) + " + content %}{% endif %}")
        j += ("{% if message['role'] == 'user' %}{{ " + slots_expr(user, stop_words, replace_eos) + " }}"
              "{% elif message['role'] == 'assistant' %}{{ " + slots_expr(assistant, stop_words, replace_eos) + " }}"
              "{% endif %}{% endfor %}")
        templates[name] = {'jinja': j, 'class': cls, 'defaultSystem': default_system}
    return {
        'version': version,
        'commit': git(repo, 'rev-parse', 'HEAD').strip(),
        'source': 'src/llamafactory/data/template.py',
        'templates': dict(sorted(templates.items())),
        'leftOut': dict(sorted(left_out.items())),
    }


out = {'axolotl': axolotl(sys.argv[1]), 'llama-factory': llama_factory(sys.argv[2])}
with open(os.path.join(ROOT, 'src', 'domain', 'trainers', 'builtinTemplates.json'), 'w', encoding='utf-8') as f:
    json.dump(out, f, indent=1, ensure_ascii=False)
    f.write('\n')
print({k: (v['version'], len(v['templates']), len(v.get('leftOut', {}))) for k, v in out.items()})
