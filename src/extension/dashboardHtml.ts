/**
 * The dashboard's HTML: a strict Content-Security-Policy (no default source, scripts and styles only by this load's
 * nonce), no remote content. The scripts and the stylesheet are inlined under the nonce rather than loaded by URL,
 * so the dashboard works wherever VS Code serves webviews (desktop, remote, and the browser build with no network,
 * where the resource service worker cannot be relied on). Plain string building with no editor API, unit-tested.
 */
import { randomBytes } from 'node:crypto';

export interface DashboardHtmlInput {
  nonce: string;
  /** Script sources, in order: the UI kit (an ES module), then the dashboard. */
  elementsScript: string;
  dashboardScript: string;
  style: string;
  /** The snapshot to render before the first message arrives (serialised, escaped here). */
  initialState?: unknown;
}

export function makeNonce(): string {
  return randomBytes(16)
    .toString('base64')
    .replace(/[^A-Za-z0-9]/g, '');
}

const escapeAttr = (s: string) =>
  s.replace(/&/g, '&amp;').replace(/"/g, '&quot;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
/** Keeps inlined code from closing its own element: "</script" and "</style" become "<\/script" (same meaning in JS). */
const inline = (code: string, tag: 'script' | 'style') => code.replace(new RegExp(`</${tag}`, 'gi'), `<\\/${tag}`);

export function dashboardHtml(input: DashboardHtmlInput): string {
  const csp = [
    "default-src 'none'",
    `style-src 'nonce-${input.nonce}'`,
    `script-src 'nonce-${input.nonce}'`,
    'img-src data:',
  ].join('; ');
  const state = escapeAttr(JSON.stringify(input.initialState ?? null));
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${csp}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<style nonce="${input.nonce}">${inline(input.style, 'style')}</style>
<title>Piggyback Lens</title>
</head>
<body data-state="${state}">
<main id="app"></main>
<script nonce="${input.nonce}" type="module">${inline(input.elementsScript, 'script')}</script>
<script nonce="${input.nonce}">${inline(input.dashboardScript, 'script')}</script>
</body>
</html>`;
}
