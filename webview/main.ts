/**
 * The dashboard: rendering only. It receives full snapshots from the extension (dashboardProtocol.ts), persists the
 * last one with setState so the serializer can restore it, and sends back user actions. All text goes in through
 * textContent and all colours through the CSSOM, so the strict CSP needs no inline script or style.
 */
import type {
  DashboardSnapshot,
  DriftView,
  EvalCellView,
  EvalCompareView,
  EvalMatrixView,
  FromWebview,
  PatchView,
  ToWebview,
} from '../src/contracts/dashboard';

declare function acquireVsCodeApi(): {
  postMessage(m: FromWebview): void;
  getState(): unknown;
  setState(s: unknown): void;
};

const vscode = acquireVsCodeApi();
const app = document.getElementById('app')!;
/** View state that is the webview's own (not the extension's): kept across snapshots and reloads. */
interface ViewState {
  kv: 'key' | 'value';
  failuresOnly: boolean;
  sort: 'shift' | 'probe';
  /** Probe whose generations are shown side by side. */
  selected?: string;
  /**
   * The heatmap's colour scale: each segment to its own maximum (default: one postfix outlier cannot blank the
   * prefix), everything to the 95th percentile (robust), or everything to the maximum.
   */
  scale?: HeatScale;
}
type HeatScale = 'segment' | 'robust' | 'max';
const SCALE_NAME: Record<HeatScale, string> = {
  segment: 'per segment',
  robust: '95th percentile of all cells',
  max: 'maximum of all cells',
};
const NEXT_SCALE: Record<HeatScale, HeatScale> = { robust: 'max', max: 'segment', segment: 'robust' };
const saved = vscode.getState() as { view?: ViewState } | undefined;
let view: ViewState = saved?.view ?? { kv: 'key', failuresOnly: false, sort: 'shift' };
// the extension's snapshot first (the current pair's results); what this webview saved only if it gave none
let snapshot: DashboardSnapshot = (JSON.parse(document.body.dataset.state ?? 'null') as DashboardSnapshot | null) ??
  (vscode.getState() as { snapshot?: DashboardSnapshot } | undefined)?.snapshot ?? { checkpoints: {} };

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c);
  return e;
}

function vsButton(label: string, onClick: () => void, secondary = false): HTMLElement {
  const b = document.createElement('vscode-button');
  b.textContent = label;
  if (secondary) b.setAttribute('secondary', '');
  b.addEventListener('click', onClick);
  return b;
}

/** A button that sends an action to the extension. */
function button(label: string, msg: FromWebview, secondary = false): HTMLElement {
  return vsButton(label, () => vscode.postMessage(msg), secondary);
}

/**
 * A button that runs a model: disabled, saying why, while something runs or before a pair is chosen (a click would
 * only queue behind the running work, or ask for checkpoints the overview already says are missing).
 */
function modelButton(s: DashboardSnapshot, label: string, msg: FromWebview, secondary = false): HTMLElement {
  const b = button(label, msg, secondary);
  const why = s.busy
    ? `busy: ${s.busy}`
    : !s.checkpoints.base || !s.checkpoints.finetuned
      ? 'choose a base and a finetuned checkpoint first'
      : undefined;
  if (why) {
    b.setAttribute('disabled', '');
    b.setAttribute('title', why);
  }
  return b;
}

const fmt = (x: number) => (x === 0 ? '0' : Math.abs(x) >= 0.01 ? x.toFixed(3) : x.toExponential(1));
const visible = (t: string) => t.replace(/\n/g, '\u21b5').replace(/ /g, '\u00b7') || '\u2205';

function overview(s: DashboardSnapshot): HTMLElement {
  const sec = el('section', { id: 'overview' }, el('h2', {}, 'Overview'));
  for (const n of s.notices ?? []) sec.append(el('div', { class: 'notice', role: 'status' }, n));
  const rows: [string, string, string][] = [];
  rows.push([
    'Checkpoints',
    `${s.checkpoints.base ?? 'no base chosen'} \u2192 ${s.checkpoints.finetuned ?? 'no finetuned chosen'}`,
    'The pair every result below was measured on.',
  ]);
  const v = s.eval?.verdict;
  if (v) {
    rows.push([
      'Behaviour shift',
      v.shift.text,
      'Answer 1 of the latest eval run: how much the finetune changed the model on general questions, outside its domain (with reference answers or a judge: whether towards misaligned answers).',
    ]);
    rows.push([
      'Where it lives',
      v.carrier.text,
      'Answer 2 (PB002): how much of that change the template\u2019s K/V carry onto every question. Not a safety verdict: a large shift outside the template is still a large shift.',
    ]);
  }
  if (s.surface) {
    rows.push([
      'Shared prefix',
      `${(100 * s.surface.identicalPrefixShare).toFixed(1)}% of ${s.surface.rows} rows share one prefix (${s.surface.prefixTokens ?? '?'} tokens; median query ${s.surface.medianQueryTokens ?? '?'})`,
      'The static piggyback surface of the active dataset: where a query-independent bias can be stored.',
    ]);
  }
  if (s.drift)
    rows.push([
      'Prefix drift',
      `TReFT value ${fmt(s.drift.treft)} on "${s.drift.query}"`,
      'Mean relative squared K/V change of the prefix between base and finetuned: what TReFT penalises.',
    ]);
  if (s.patch) {
    const removed = s.patch.kl.finetuned > 0 ? 1 - s.patch.kl.patched / s.patch.kl.finetuned : 0;
    rows.push([
      'Patch effect',
      `${s.patch.span} patch on one question: KL to base ${fmt(s.patch.kl.finetuned)} \u2192 ${fmt(s.patch.kl.patched)} (${(100 * removed).toFixed(0)}% of this answer's shift removed${s.patch.generations.patched === s.patch.generations.finetuned ? '; the greedy answer itself is unchanged' : ''})`,
      'How much of the finetune\u2019s shift on this one question the base K/V undo, measured on the base model\u2019s answer. One question is an illustration; the piggyback grade comes from an eval run over many.',
    ]);
  }
  const table = el('table', { class: 'overview' });
  for (const [k, v, why] of rows)
    table.append(el('tr', {}, el('th', {}, k), el('td', {}, el('div', {}, v), el('div', { class: 'why' }, why))));
  sec.append(
    table,
    el(
      'div',
      { class: 'actions' },
      modelButton(s, 'Measure drift', { type: 'runDrift' }),
      modelButton(s, 'Patch prefix and compare', { type: 'runPatch', span: 'prefix' }, true),
      modelButton(s, 'Patch postfix and compare', { type: 'runPatch', span: 'postfix' }, true),
    ),
  );
  return sec;
}

function heatmap(d: DriftView): HTMLElement {
  const sec = el(
    'section',
    { id: 'heatmap' },
    el('h2', {}, `Drift heatmap (${view.kv === 'key' ? 'K' : 'V'}), layers \u00d7 tokens`),
  );
  // one scale for every segment by default (a per-segment scale makes a quiet query look as drifted as the postfix)
  const scale = view.scale ?? 'robust';
  sec.append(
    el(
      'div',
      { class: 'actions' },
      vsButton(
        view.kv === 'key' ? 'Show V' : 'Show K',
        () => setView({ kv: view.kv === 'key' ? 'value' : 'key' }),
        true,
      ),
      vsButton(`Scale: ${SCALE_NAME[scale]}`, () => setView({ scale: NEXT_SCALE[scale] }), true),
    ),
  );
  const all = d.segments.flatMap((s) => s[view.kv].flat());
  const sorted = [...all].sort((a, b) => a - b);
  const p95 = sorted[Math.min(sorted.length - 1, Math.floor(0.95 * sorted.length))] ?? 0;
  // the value that gets full colour, per segment
  const top = (seg: DriftView['segments'][number]) =>
    Math.max(
      1e-12,
      scale === 'segment' ? Math.max(0, ...seg[view.kv].flat()) : scale === 'robust' ? p95 : Math.max(0, ...all),
    );
  const table = el('table', { class: 'heat' });
  const head = el('tr', {}, el('th', {}, 'layer'));
  for (const s of d.segments) {
    s.tokens.forEach((t, i) => {
      const th = el(
        'th',
        { class: `tok seg-${s.name}${i === 0 ? ' seg-start' : ''}`, title: `${s.name} token ${i}: id ${t.id}` },
        visible(t.text),
      );
      head.append(th);
    });
  }
  table.append(head);
  for (let l = 0; l < d.layers; l++) {
    const tr = el('tr', {}, el('th', {}, String(l)));
    for (const s of d.segments) {
      s[view.kv][l].forEach((v, i) => {
        const td = el('td', {
          class: `cell seg-${s.name}${i === 0 ? ' seg-start' : ''}`,
          title: `${s.name} \u00b7 layer ${l} \u00b7 "${s.tokens[i].text}" (id ${s.tokens[i].id}): ${fmt(v)}`,
        });
        td.style.setProperty('--heat', String(Math.sqrt(Math.min(1, v / top(s)))));
        tr.append(td);
      });
    }
    table.append(tr);
  }
  // the caption states what the cells show: the mean of this map (K or V), and the K and V mean beside it
  const kv = view.kv === 'key' ? 'K' : 'V';
  const mapMean = (seg: DriftView['segments'][number]) => {
    const cells = seg[view.kv].flat();
    return cells.length ? cells.reduce((a, b) => a + b, 0) / cells.length : 0;
  };
  const legend = el(
    'div',
    { class: 'legend' },
    ...d.segments.map((s) =>
      el('span', { class: `seg-${s.name}` }, `${s.name}: mean ${kv} drift ${fmt(mapMean(s))} (K and V ${fmt(s.mean)})`),
    ),
  );
  // the colour key: what a full cell means on this scale (square-root ramp), per segment where scales differ
  const key = el('div', { class: 'colour-key', role: 'img', 'aria-label': 'colour scale' });
  const scales =
    scale === 'segment' ? d.segments.map((s) => [s.name, top(s)] as const) : [['all', top(d.segments[0])] as const];
  for (const [name, value] of scales) {
    key.append(
      el(
        'div',
        { class: 'key-row' },
        el('span', { class: 'key-name' }, name),
        el('span', { class: 'key-min' }, '0'),
        el('span', { class: 'key-ramp' }),
        el('span', { class: 'key-max' }, `${fmt(value)}${scale === 'robust' ? ' and above' : ''}`),
      ),
    );
  }
  key.append(
    el(
      'div',
      { class: 'why' },
      `Relative squared ${kv} drift per layer and token; colour on a square-root scale, full at the value shown (${SCALE_NAME[scale]}${scale === 'segment' ? ': each segment on its own scale, so colours are not comparable across segments' : ', one scale for every segment'}).`,
    ),
  );
  sec.append(el('div', { class: 'scroll' }, table), legend, key);
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
  const sec = el(
    'section',
    { id: 'comparison' },
    el('h2', {}, `Patch comparison: ${p.span} (${p.patchedPositions} positions) on "${p.query}"`),
  );
  const cols = el('div', { class: 'columns' });
  const col = (title: string, text: string, kl: string) =>
    el(
      'div',
      { class: 'col' },
      el('h3', {}, title),
      el('div', { class: 'kl' }, kl),
      title === 'base' ? el('div', { class: 'gen' }, text) : diffWords(p.generations.base, text),
    );
  cols.append(
    col('base', p.generations.base, 'reference'),
    col('finetuned', p.generations.finetuned, `KL(base\u2016finetuned) ${fmt(p.kl.finetuned)}`),
    col('patched', p.generations.patched, `KL(base\u2016patched) ${fmt(p.kl.patched)}`),
  );
  sec.append(cols);
  return sec;
}

function setView(change: Partial<ViewState>): void {
  view = { ...view, ...change };
  vscode.setState({ snapshot, view });
  render();
}

function toggleButton(label: string, on: boolean, onClick: () => void): HTMLElement {
  const b = vsButton(label, onClick, !on);
  b.setAttribute('aria-pressed', String(on));
  return b;
}

const FINETUNED = 'finetuned';

function evalMatrix(m: EvalMatrixView): HTMLElement {
  const sec = el(
    'section',
    { id: 'evals' },
    el('h2', {}, 'Eval matrix'),
    el('div', { class: 'why' }, `${m.title}. ${m.done} of ${m.total} probes finished.`),
  );
  for (const h of m.headline) sec.append(el('div', { class: 'headline' }, h));
  if (m.layers?.length) sec.append(layerChart(m.layers));
  const ft = m.conditions.indexOf(FINETUNED);
  const shift = (p: EvalMatrixView['probes'][number]) => p.cells[ft]?.kl ?? -1;
  let probes = m.probes.filter((p) => p.cells.some((c) => c));
  if (view.failuresOnly) probes = probes.filter((p) => p.cells.some((c) => c?.failed));
  if (view.sort === 'shift') probes = [...probes].sort((a, b) => shift(b) - shift(a));
  sec.append(
    el(
      'div',
      { class: 'actions' },
      toggleButton('Failures only', view.failuresOnly, () => setView({ failuresOnly: !view.failuresOnly })),
      toggleButton(view.sort === 'shift' ? 'Sorted by shift' : 'Sorted by probe', true, () =>
        setView({ sort: view.sort === 'shift' ? 'probe' : 'shift' }),
      ),
      button('Open HTML report', { type: 'openReport', folder: m.folder }, true),
    ),
    el(
      'div',
      { class: 'why' },
      'Cells: KL(base\u2016condition) in nats on the base model\u2019s answer (darker: further from base). A cell fails when the judge scored an answer misaligned or the misaligned reference answer is preferred. Click a probe for its answers side by side.',
    ),
  );
  const max = Math.max(1e-9, ...probes.flatMap((p) => p.cells.map((c) => c?.kl ?? 0)));
  const table = el(
    'table',
    { class: 'matrix' },
    el('tr', {}, el('th', {}, 'probe'), ...m.conditions.map((c) => el('th', {}, c))),
  );
  for (const p of probes) {
    const tr = el('tr', { class: p.id === view.selected ? 'selected' : '', title: p.question });
    const name = el('th', { class: 'probe' }, p.id, el('div', { class: 'why' }, p.question));
    tr.append(name);
    // a probe with results has its empty cells for good (no query control for a short question, a skipped
    // condition): shown as not measured, not as pending
    const started = p.cells.some((c) => c);
    for (const [i, c] of p.cells.entries()) tr.append(matrixCell(c, m.conditions[i], max, started));
    tr.addEventListener('click', () => setView({ selected: view.selected === p.id ? undefined : p.id }));
    table.append(tr);
  }
  const cannotJudge =
    'Failures cannot be judged in this run: its probes carry no reference answers (aligned / misaligned) and no judge was configured, so no answer can fail. Add references to the probe file or set piggyback.judge.endpoint.';
  if (view.failuresOnly && m.judgeable === false) sec.append(el('p', { class: 'why' }, cannotJudge));
  else if (probes.length === 0)
    sec.append(
      el(
        'p',
        { class: 'why' },
        view.failuresOnly ? 'No failing probes among those with reference answers or judge scores.' : 'No results yet.',
      ),
    );
  else sec.append(el('div', { class: 'scroll' }, table));
  const chosen = m.probes.find((p) => p.id === view.selected);
  if (chosen) sec.append(sideBySide(chosen, m.conditions));
  return sec;
}

/** The layer sweep as horizontal bars: the prefix share with only those layers' prefix K/V patched. */
function layerChart(rows: NonNullable<EvalMatrixView['layers']>): HTMLElement {
  const pctText = (x: number | null) => (x === null ? 'n/a' : `${Math.round(100 * x) || 0}%`);
  const chart = el('div', { class: 'layers', role: 'table', 'aria-label': 'Layer sweep: piggyback share per layer' });
  chart.append(
    el('h3', {}, 'Layer sweep: prefix share per layer'),
    el(
      'div',
      { class: 'why' },
      'The prefix patch on one layer\u2019s K/V at a time, then on layer ranges (general probes). Bars run from 0% to 100%; the whisker is the 95% CI.',
    ),
  );
  for (const r of rows) {
    const bar = el('div', { class: 'bar' });
    bar.style.setProperty('--share', String(Math.max(0, Math.min(1, r.share ?? 0))));
    const ci = el('div', { class: 'ci' });
    ci.style.setProperty('--low', String(Math.max(0, Math.min(1, r.low ?? 0))));
    ci.style.setProperty('--high', String(Math.max(0, Math.min(1, r.high ?? 0))));
    const track = el('div', { class: 'track' }, bar, ...(r.low !== null ? [ci] : []));
    chart.append(
      el(
        'div',
        { class: 'layer', role: 'row' },
        el('span', { class: 'label', role: 'cell' }, r.label),
        track,
        el(
          'span',
          { class: 'value', role: 'cell' },
          r.share === null ? 'n/a' : `${pctText(r.share)} (${pctText(r.low)} to ${pctText(r.high)})`,
        ),
      ),
    );
  }
  return chart;
}

function matrixCell(c: EvalCellView | null, condition: string, max: number, started: boolean): HTMLElement {
  if (!c && started)
    return el(
      'td',
      {
        class: 'na',
        title: `${condition}: not measured for this probe (the query control needs a question at least as long as the prefix; a condition the template could not render is skipped)`,
      },
      'n/a',
    );
  if (!c) return el('td', { class: 'pending', title: 'not run yet' }, '\u2026');
  const td = el(
    'td',
    {
      class: `cell${c.failed ? ' failed' : ''}`,
      title: `${condition}: KL ${fmt(c.kl)}${c.margin !== null ? `, margin ${c.margin.toFixed(2)}` : ''}${c.aligned.length ? `, judge ${c.aligned.join(', ')}` : ''}`,
    },
    fmt(c.kl),
  );
  td.style.setProperty('--heat', String(Math.sqrt(c.kl / max)));
  if (c.aligned.length)
    td.append(el('div', { class: 'judge' }, c.aligned.map((a) => (a === null ? '?' : String(a))).join(' ')));
  return td;
}

function sideBySide(p: EvalMatrixView['probes'][number], conditions: string[]): HTMLElement {
  const base = p.cells[conditions.indexOf('base')]?.generations[0] ?? '';
  const cols = el('div', { class: 'columns wide' });
  p.cells.forEach((c, i) => {
    if (!c) return;
    const head = `KL ${fmt(c.kl)}${c.margin !== null ? ` \u00b7 margin ${c.margin.toFixed(2)}` : ''}${c.aligned.length ? ` \u00b7 judge ${c.aligned.join(', ')}` : ''}`;
    const answers = c.generations
      .slice(0, 3)
      .map((g) => (conditions[i] === 'base' ? el('div', { class: 'gen' }, g) : diffWords(base, g)));
    const more =
      c.generations.length > 3 ? [el('div', { class: 'why' }, `+ ${c.generations.length - 3} more samples`)] : [];
    cols.append(
      el(
        'div',
        { class: `col${c.failed ? ' failed' : ''}` },
        el('h3', {}, conditions[i]),
        el('div', { class: 'kl' }, head),
        ...answers,
        ...more,
      ),
    );
  });
  return el('div', { id: 'probe-detail' }, el('h3', {}, `${p.id}: ${p.question}`), cols);
}

function compareView(c: EvalCompareView): HTMLElement {
  const sec = el('section', { id: 'compare' }, el('h2', {}, `Runs compared: ${c.names[0]} | ${c.names[1]}`));
  for (const n of c.notes) sec.append(el('div', { class: 'error' }, n));
  if (c.differences?.length)
    sec.append(
      el('div', { class: 'why' }, 'What changed from the first run to the second:'),
      el('ul', {}, ...c.differences.map((d) => el('li', {}, d))),
    );
  const table = el(
    'table',
    { class: 'overview compare' },
    el('tr', {}, el('th', {}, ''), el('th', {}, c.names[0]), el('th', {}, c.names[1])),
  );
  for (const [label, a, b] of c.rows) table.append(el('tr', {}, el('th', {}, label), el('td', {}, a), el('td', {}, b)));
  sec.append(table);
  return sec;
}

function render(): void {
  const s = snapshot;
  app.replaceChildren();
  if (s.busy) app.append(el('div', { class: 'busy' }, s.busy));
  if (s.error) app.append(el('div', { class: 'error' }, s.error));
  app.append(overview(s));
  // a comparison just asked for is shown where the user looks: under the overview, scrolled to
  if (s.compare) app.append(compareView(s.compare));
  if (s.drift) app.append(heatmap(s.drift));
  if (s.patch) app.append(comparison(s.patch));
  if (s.eval) app.append(evalMatrix(s.eval));
  else
    app.append(
      el(
        'section',
        { id: 'evals' },
        el('h2', {}, 'Eval matrix'),
        el(
          'p',
          { class: 'why' },
          'No eval run yet: probes \u00d7 conditions (base, finetuned, patched, perturbed) appear here.',
        ),
        el('div', { class: 'actions' }, modelButton(s, 'Run eval', { type: 'runEval' })),
      ),
    );
  const compareKey = s.compare ? s.compare.names.join('\u0000') : '';
  if (compareKey && compareKey !== shownCompare) document.getElementById('compare')?.scrollIntoView();
  shownCompare = compareKey;
}

/** The comparison last shown: a new one is scrolled into view once. */
let shownCompare = '';

window.addEventListener('message', (e: MessageEvent<ToWebview>) => {
  if (e.data?.type === 'snapshot') {
    snapshot = e.data.snapshot;
    vscode.setState({ snapshot, view });
    render();
  }
});
render();
vscode.postMessage({ type: 'ready' });
