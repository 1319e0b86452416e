// The dashboard HTML builder: the strict CSP and nonces every webview of ours must have.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { dashboardHtml, makeNonce } from '../../src/extension/dashboardHtml';

const input = {
  nonce: 'abc123XYZ',
  elementsScript: 'export const x = "</script><script>alert(2)</script>";',
  dashboardScript: 'console.log(1)',
  style: 'body { color: red } </style><script>alert(3)</script>',
  initialState: { checkpoints: { base: '"><script>alert(1)</script>' } },
};

describe('dashboard HTML', () => {
  const html = dashboardHtml(input);
  const csp = /<meta http-equiv="Content-Security-Policy" content="([^"]+)">/.exec(html)![1];
  const directives = Object.fromEntries(
    csp
      .split(';')
      .map((d) => d.trim().split(/\s+/))
      .map(([k, ...v]) => [k, v]),
  );

  it("denies everything by default and allows scripts and styles only by this load's nonce", () => {
    assert.deepEqual(directives['default-src'], ["'none'"]);
    assert.deepEqual(directives['script-src'], [`'nonce-${input.nonce}'`]);
    assert.deepEqual(directives['style-src'], [`'nonce-${input.nonce}'`]);
    assert.ok(!csp.includes('unsafe-inline') && !csp.includes('unsafe-eval') && !/https?:/.test(csp));
  });

  it('gives every script and style element the nonce, and loads nothing by URL', () => {
    // the contents of script and style elements are raw text for the HTML parser: look at the elements only
    const elements = html.replace(/(<(script|style)\b[^>]*>)[\s\S]*?(<\/\2>)/g, '$1$3');
    const tags = [...elements.matchAll(/<(script|style)\b[^>]*>/g)].map((m) => m[0]);
    assert.equal(tags.length, 3, tags.join(' '));
    for (const t of tags) assert.match(t, new RegExp(`nonce="${input.nonce}"`));
    assert.ok(!/\b(src|href)=/.test(elements));
  });

  it('inlined code cannot close its element and smuggle markup in', () => {
    assert.ok(!html.includes('</script><script>alert(2)'));
    assert.ok(!html.includes('</style><script>alert(3)'));
    assert.ok(html.includes('<\\/script><script>alert(2)<\\/script>'));
  });

  it('escapes the initial state instead of injecting markup', () => {
    assert.ok(!html.includes('"><script>alert(1)</script>'));
    assert.ok(html.includes('&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;'));
  });

  it('makes a fresh, unguessable nonce per load', () => {
    const a = makeNonce();
    assert.notEqual(a, makeNonce());
    assert.match(a, /^[A-Za-z0-9]{16,}$/);
  });
});
