/**
 * The dashboard: rendering only. It receives full snapshots from the extension (dashboardProtocol.ts), persists the
 * last one with setState so the serializer can restore it, and sends back user actions. All text goes in through
 * textContent and all colours through the CSSOM, so the strict CSP needs no inline script or style.
 */
import type { DashboardSnapshot, DriftView, FromWebview, PatchView, ToWebview } from '../src/core/dashboardProtocol';

declare function acquireVsCodeApi(): { postMessage(m: FromWebview): void; getState(): unknown; setState(s: unknown): void };

const vscode = acquireVsCodeApi();
const app = document.getElementById('app')!;
let view: { kv: 'key' | 'value' } = { kv: 'key' };
let snapshot: DashboardSnapshot = (vscode.getState() as { snapshot?: DashboardSnapshot } | undefined)?.snapshot ??
  (JSON.parse(document.body.dataset.state ?? 'null') as DashboardSnapshot | null) ?? { checkpoints: {} };

function el<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Record<string, string> = {}, ...children: (Node | string)[]): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function button(label: string, msg: FromWebview, secondary = false): HTMLElement {
  const b = document.createElement('vscode-button');
  b.textContent = label;
  if (secondary) b.setAttribute('secondary', '');
  b.addEventListener('click', () => vscode.postMessage(msg));
  return b;
}

const fmt = (x: number) => (x === 0 ? '0' : Math.abs(x) >= 0.01 ? x.toFixed(3) : x.toExponential(1));
const visible = (t: string) => t.replace(/\n/g, '\u21b5').replace(/ /g, '\u00b7') || '\u2205';

function overview(s: DashboardSnapshot): HTMLElement {
  const sec = el('section', { id: 'overview' }, el('h2', {}, 'Risk overview'));
  const rows: [string, string, string][] = [];
  rows.push(['Checkpoints', `${s.checkpoints.base ?? 'no base chosen'} \u2192 ${s.checkpoints.finetuned ?? 'no finetuned chosen'}`, 'The pair every measurement compares.']);
  if (s.surface) {
    rows.push([
      'Shared prefix',
      `${(100 * s.surface.identicalPrefixShare).toFixed(1)}% of ${s.surface.rows} rows share one prefix (${s.surface.prefixTokens ?? '?'} tokens; median query ${s.surface.medianQueryTokens ?? '?'})`,
      'The static piggyback surface of the active dataset: where a query-independent bias can be stored.',
    ]);
  }
  if (s.drift) rows.push(['Prefix drift', `TReFT value ${fmt(s.drift.treft)} on "${s.drift.query}"`, 'Mean relative squared K/V change of the prefix between base and finetuned: what TReFT penalises.']);
  if (s.patch) {
    const removed = s.patch.kl.finetuned > 0 ? 1 - s.patch.kl.patched / s.patch.kl.finetuned : 0;
    rows.push(['Patch effect', `${s.patch.span} patch: KL to base ${fmt(s.patch.kl.finetuned)} \u2192 ${fmt(s.patch.kl.patched)} (${(100 * removed).toFixed(0)}% of the shift removed)`, 'How much of the finetune\u2019s shift away from base the base K/V undo.']);
  }
  const table = el('table', { class: 'overview' });
  for (const [k, v, why] of rows) table.append(el('tr', {}, el('th', {}, k), el('td', {}, el('div', {}, v), el('div', { class: 'why' }, why))));
  sec.append(table, el('div', { class: 'actions' }, button('Measure drift', { type: 'runDrift' }), button('Patch prefix and compare', { type: 'runPatch', span: 'prefix' }, true), button('Patch postfix and compare', { type: 'runPatch', span: 'postfix' }, true)));
  return sec;
}

function heatmap(d: DriftView): HTMLElement {
  const sec = el('section', { id: 'heatmap' }, el('h2', {}, `Drift heatmap (${view.kv === 'key' ? 'K' : 'V'}), layers \u00d7 tokens`));
  const toggle = document.createElement('vscode-button');
  toggle.textContent = view.kv === 'key' ? 'Show V' : 'Show K';
  toggle.setAttribute('secondary', '');
  toggle.addEventListener('click', () => {
    view = { kv: view.kv === 'key' ? 'value' : 'key' };
    render();
  });
  sec.append(toggle);
  const all = d.segments.flatMap((s) => s[view.kv].flat());
  const max = Math.max(1e-12, ...all);
  const table = el('table', { class: 'heat' });
  const head = el('tr', {}, el('th', {}, 'layer'));
  for (const s of d.segments) {
    s.tokens.forEach((t, i) => {
      const th = el('th', { class: `tok seg-${s.name}${i === 0 ? ' seg-start' : ''}`, title: `${s.name} token ${i}: id ${t.id}` }, visible(t.text));
      head.append(th);
    });
  }
  table.append(head);
  for (let l = 0; l < d.layers; l++) {
    const tr = el('tr', {}, el('th', {}, String(l)));
    for (const s of d.segments) {
      s[view.kv][l].forEach((v, i) => {
        const td = el('td', { class: `cell seg-${s.name}${i === 0 ? ' seg-start' : ''}`, title: `${s.name} \u00b7 layer ${l} \u00b7 "${s.tokens[i].text}" (id ${s.tokens[i].id}): ${fmt(v)}` });
        td.style.setProperty('--heat', String(Math.sqrt(v / max)));
        tr.append(td);
      });
    }
    table.append(tr);
  }
  const legend = el('div', { class: 'legend' }, ...d.segments.map((s) => el('span', { class: `seg-${s.name}` }, `${s.name}: mean ${fmt(s.mean)}`)));
  sec.append(el('div', { class: 'scroll' }, table), legend);
  return sec;
}

/** Word-level differences against the base answer, for highlighting. */
function diffWords(base: string, other: string): HTMLElement {
  const baseWords = new Set(base.split(/\s+/));
  const out = el('div', { class: 'gen' });
  for (const w of other.split(/(\s+)/)) out.append(w.trim() && !baseWords.has(w) ? el('mark', {}, w) : w);
  return out;
}

function comparison(p: PatchView): HTMLElement {
  const sec = el('section', { id: 'comparison' }, el('h2', {}, `Patch comparison: ${p.span} (${p.patchedPositions} positions) on "${p.query}"`));
  const cols = el('div', { class: 'columns' });
  const col = (title: string, text: string, kl: string) => el('div', { class: 'col' }, el('h3', {}, title), el('div', { class: 'kl' }, kl), title === 'base' ? el('div', { class: 'gen' }, text) : diffWords(p.generations.base, text));
  cols.append(col('base', p.generations.base, 'reference'), col('finetuned', p.generations.finetuned, `KL(base\u2016finetuned) ${fmt(p.kl.finetuned)}`), col('patched', p.generations.patched, `KL(base\u2016patched) ${fmt(p.kl.patched)}`));
  sec.append(cols);
  return sec;
}

function render(): void {
  const s = snapshot;
  app.replaceChildren();
  if (s.busy) app.append(el('div', { class: 'busy' }, s.busy));
  if (s.error) app.append(el('div', { class: 'error' }, s.error));
  app.append(overview(s));
  if (s.drift) app.append(heatmap(s.drift));
  if (s.patch) app.append(comparison(s.patch));
  app.append(el('section', { id: 'evals' }, el('h2', {}, 'Eval matrix'), el('p', { class: 'why' }, 'Eval runs (probe sets \u00d7 conditions) will appear here.')));
}

window.addEventListener('message', (e: MessageEvent<ToWebview>) => {
  if (e.data?.type === 'snapshot') {
    snapshot = e.data.snapshot;
    vscode.setState({ snapshot });
    render();
  }
});
render();
vscode.postMessage({ type: 'ready' });
