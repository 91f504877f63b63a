// Drives chainkeeper's web console in real Chromium, one named step at a time, for the Rust e2e test
// (tests/tests/e2e/console_browser.rs). The test keeps this process open and, between steps, acts on the world
// itself (breaks a chain in the Exact simulator, calls the API), so steps come in on stdin and answers go out on
// stdout, one JSON line each:
//
//   node console.mjs --base http://127.0.0.1:PORT --screenshots DIR [--timeout-ms 20000]
//   → {"ready":true}
//   ← {"step":"org-page","actions":[{"goto":"/console/orgs/acme"},{"click":{"role":"button","name":"Create"}}]}
//   → {"step":"org-page","ok":true,"url":…,"status":200,"title":…,"h1":…,"text":…,"fields":[…],"values":{…},
//      "axe":{"critical":0,"serious":0,"moderate":0,"minor":0,"violations":[…]},"screenshot":"DIR/03-org-page.png",
//      "blocked":[]}
//
// Actions (controls are found as a person finds them: by their label or role and accessible name):
//   {"goto": "/console/…"}                       relative to --base
//   {"fill": {"label": "Name", "value": "x"}}    also {"select": …}; {"check": {"label": …}}, {"uncheck": …}
//   {"click": {"role": "button", "name": "Save"}}  role button|link; waits for the page that follows
//   {"submit_with_enter": {"label": "Name"}}     the keyboard way: Enter in that field
//   {"oidc_login": {"login": "alice+ck-admins"}} the oidc-provider peer's devInteractions login and consent pages
//   {"exact_signin": {"username","password","totp_secret"}}  the Exact simulator's sign-in pages (exact-pages.mjs),
//                                                until the browser is back on --base
//   {"wait_text": {"text": "Healthy", "timeout_ms": 20000}}  reloads every 300 ms until the main text has it
//                                                ({"any": ["Needs repair", "Recovering"]}: one of them, in values.seen)
//   {"read": {"key": "token", "selector": "#new-token"}}  text (or input value) into "values"
//   {"read_clipboard": {"key": "copied"}}        what a copy button put on the clipboard
//   {"viewport": {"width": 390, "height": 844}}  a phone's width
//   {"tab_walk": {"key": "focus", "count": 40}}  presses Tab, records each focused control's role and name
//
// After the actions: axe-core (tests/peers/browser/node_modules/axe-core, injected through the DevTools protocol,
// which the page's Content-Security-Policy does not apply to) on every page under --base, and a full-page
// screenshot. A step that throws answers "ok":false with "error" and still reports the page it is on.
// Field values are reported, but never those of password fields or of fields named like a secret.

import { readFile, mkdir } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { isLoopback, launchChromium } from './launch.mjs';
import { Stop, walkExactSignIn } from './exact-pages.mjs';

function args(argv) {
  const out = {};
  for (let i = 2; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['base', 'screenshots']) if (!out[k]) throw new Error(`--${k} is required`);
  return out;
}

const a = args(process.argv);
const base = a.base.replace(/\/$/, '');
const timeoutMs = Number(a['timeout-ms'] || 20000);
const axeSource = await readFile(createRequire(import.meta.url).resolve('axe-core/axe.min.js'), 'utf8');
await mkdir(a.screenshots, { recursive: true });

const { context, close, blocked } = await launchChromium();
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
const page = context.pages()[0] || (await context.newPage());
page.setDefaultTimeout(timeoutMs);
await page.setViewportSize({ width: 1024, height: 768 });

// The HTTP status of the last document the main frame loaded.
let status = null;
page.on('response', (r) => {
  if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) status = r.status();
});

// CONSOLE_TRACE=1: every main-frame navigation on stderr, with the time since start.
const t0 = Date.now();
if (process.env.CONSOLE_TRACE) {
  page.on('framenavigated', (f) => {
    if (f === page.mainFrame()) process.stderr.write(`[console.mjs +${Date.now() - t0} ms] ${f.url().slice(0, 120)}\n`);
  });
}

// What the page's console said that was an error (a CSP refusal shows here), per step.
let consoleErrors = [];
page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text().slice(0, 300)); });
page.on('pageerror', (e) => consoleErrors.push(`script error: ${e.message}`.slice(0, 300)));

// Requests to anything but loopback that a console page made (launch.mjs aborts them all; the IdP's own pages
// may ask for web fonts, which is not ours to answer for).
let blockedFromConsole = [];
page.on('requestfailed', (r) => {
  const from = (() => { try { return r.frame().url(); } catch { return ''; } })();
  if (!isLoopback(r.url()) && from.startsWith(`${base}/`)) blockedFromConsole.push(r.url());
});

const onBase = () => page.url().startsWith(`${base}/`);
const settle = async () => {
  await page.waitForLoadState('load', { timeout: timeoutMs }).catch(() => {});
  await page.waitForLoadState('networkidle', { timeout: 3000 }).catch(() => {});
};
/** The text of the page's `main` (of its body when it has none). */
const mainText = () => page.evaluate(() => (document.querySelector('main') || document.body).innerText);
const url = (u) => (/^https?:/.test(u) ? u : `${base}${u}`);
const byLabel = (label) => page.getByLabel(label, { exact: true }).first();

/** Runs `action` (a click, a key) and waits for the document it leads to (a form post answered on the same URL,
 * a field's problem, is a new document too). */
async function navigating(action) {
  const loaded = page.waitForEvent('load', { timeout: timeoutMs }).then(() => null, (e) => e);
  await action();
  const failed = await loaded;
  if (failed) throw new Error(`no new page within ${timeoutMs} ms`);
  await settle();
}

async function run(action, values) {
  const [kind, v] = Object.entries(action)[0];
  switch (kind) {
    case 'goto':
      await page.goto(url(v), { waitUntil: 'load' });
      return settle();
    case 'fill':
      return byLabel(v.label).fill(v.value);
    case 'select':
      return byLabel(v.label).selectOption(v.value);
    case 'check':
      return byLabel(v.label).check();
    case 'uncheck':
      return byLabel(v.label).uncheck();
    case 'click': {
      const target = page.getByRole(v.role || 'button', { name: v.name, exact: v.exact !== false }).first();
      if (v.no_navigation) return target.click();
      return navigating(() => target.click());
    }
    case 'submit_with_enter':
      return navigating(() => byLabel(v.label).press('Enter'));
    case 'oidc_login': {
      // oidc-provider's devInteractions: a login form (login, password), then a consent form ("Continue").
      await page.locator('input[name="login"]').fill(v.login);
      await page.locator('input[name="password"]').fill(v.password || 'any');
      await navigating(() => page.locator('button[type="submit"]').first().click());
      for (let i = 0; i < 3 && !onBase(); i++) {
        const btn = page.locator('button[type="submit"]').first();
        if (!(await btn.count())) break;
        await navigating(() => btn.click());
      }
      if (!onBase()) throw new Error(`the IdP's pages did not lead back to chainkeeper (at ${page.url()})`);
      return;
    }
    case 'exact_signin': {
      // The console hands over with a page whose link its script follows at once: wait until the browser left.
      if (onBase()) await page.waitForURL((u) => !u.href.startsWith(`${base}/`), { timeout: timeoutMs });
      const creds = { username: v.username, password: v.password, totpSecret: v.totp_secret, emailCode: v.email_code };
      try {
        await walkExactSignIn(page, creds, onBase, v.timeout_ms || 30000);
      } catch (e) {
        if (e instanceof Stop) throw new Error(`the Exact sign-in stopped (${e.reason}): ${e.message}`);
        throw e;
      }
      return settle();
    }
    case 'wait_text': {
      // `text`, or any of `any`: the first one seen is kept in values.seen.
      const wanted = v.any || [v.text];
      const limit = v.timeout_ms || timeoutMs;
      const until = Date.now() + limit;
      for (;;) {
        const text = await mainText();
        const seen = wanted.find((w) => text.includes(w));
        if (seen) { values.seen = seen; return; }
        if (Date.now() > until) throw new Error(`none of ${JSON.stringify(wanted)} appeared within ${limit} ms`);
        await page.waitForTimeout(300);
        await page.reload({ waitUntil: 'load' });
      }
    }
    case 'read': {
      const loc = v.selector ? page.locator(v.selector).first() : byLabel(v.label);
      const tag = await loc.evaluate((e) => e.tagName);
      values[v.key] = ['INPUT', 'TEXTAREA', 'SELECT'].includes(tag) ? await loc.inputValue() : (await loc.innerText()).trim();
      return;
    }
    case 'read_clipboard':
      values[v.key] = await page.evaluate(() => navigator.clipboard.readText());
      return;
    case 'viewport':
      return page.setViewportSize({ width: v.width, height: v.height });
    case 'tab_walk': {
      const seen = [];
      for (let i = 0; i < (v.count || 30); i++) {
        await page.keyboard.press('Tab');
        seen.push(await page.evaluate(() => {
          const e = document.activeElement;
          if (!e || e === document.body) return null;
          const label = e.labels && e.labels[0] ? e.labels[0].innerText : '';
          return { tag: e.tagName.toLowerCase(), type: e.getAttribute('type'), name: (label || e.getAttribute('aria-label') || e.innerText || e.value || '').trim().slice(0, 60) };
        }));
      }
      values[v.key] = seen;
      return;
    }
    default:
      throw new Error(`unknown action ${kind}`);
  }
}

const SECRET_NAME = /pass|secret|totp|token|otpauth/i;

/** Each form control: its label, name, value (not a secret's), and the problem shown next to it (aria-describedby). */
async function fields() {
  return page.evaluate((secretSource) => {
    const secret = new RegExp(secretSource, 'i');
    return [...document.querySelectorAll('input, select, textarea')]
      .filter((e) => e.type !== 'hidden' && e.type !== 'submit')
      .map((e) => {
        const label = e.labels && e.labels[0] ? e.labels[0].innerText.trim() : null;
        const described = (e.getAttribute('aria-describedby') || '').split(/\s+/).filter(Boolean)
          .map((id) => document.getElementById(id)).filter(Boolean).map((d) => d.innerText.trim()).join(' ');
        const hide = e.type === 'password' || secret.test(e.name || '');
        const value = e.type === 'checkbox' || e.type === 'radio' ? e.checked : hide ? `(${e.value.length} characters)` : e.value;
        return { label, name: e.name, value, invalid: e.getAttribute('aria-invalid') === 'true', described };
      });
  }, SECRET_NAME.source);
}

async function axe() {
  if (!onBase()) return null;
  if (!(await page.evaluate(() => typeof window.axe !== 'undefined'))) await page.evaluate(axeSource);
  const r = await page.evaluate(() => window.axe.run(document, { resultTypes: ['violations'] }));
  const out = { critical: 0, serious: 0, moderate: 0, minor: 0, violations: [] };
  for (const v of r.violations) {
    out[v.impact] = (out[v.impact] || 0) + 1;
    out.violations.push({ id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')) });
  }
  return out;
}

let n = 0;
async function step(req) {
  n += 1;
  const values = {};
  let error = null;
  consoleErrors = [];
  blockedFromConsole = [];
  for (const action of req.actions || []) {
    try {
      await run(action, values);
    } catch (e) {
      error = `${Object.keys(action)[0]}: ${e.message.split('\n')[0]}`;
      break;
    }
  }
  const report = {
    step: req.step, ok: error === null, error, url: page.url(), status, values, blocked: [...blocked], console: consoleErrors,
    blocked_from_console: blockedFromConsole,
  };
  consoleErrors = [];
  blockedFromConsole = [];
  try {
    report.title = await page.title();
    report.h1 = (await page.locator('h1').allInnerTexts()).join(' | ');
    report.text = (await mainText()).slice(0, 6000);
    report.fields = await fields();
    report.axe = req.axe === false ? null : await axe();
    const name = `${String(n).padStart(2, '0')}-${req.step.replace(/[^a-z0-9-]+/gi, '-')}.png`;
    report.screenshot = join(a.screenshots, name);
    await page.screenshot({ path: report.screenshot, fullPage: true });
  } catch (e) {
    report.ok = false;
    report.error = `${report.error || ''} (report: ${e.message.split('\n')[0]})`;
  }
  return report;
}

console.log(JSON.stringify({ ready: true }));
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let req;
  try {
    req = JSON.parse(line);
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: `not JSON: ${e.message}` }));
    continue;
  }
  console.log(JSON.stringify(await step(req)));
}
await close();
