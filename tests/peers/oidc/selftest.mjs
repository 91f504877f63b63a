#!/usr/bin/env node
// Self-test of server.mjs: starts it on a free port and walks the authorization-code flow
// over plain HTTP exactly like a browser posting the HTML forms, then checks the token
// endpoint's behaviour (rotation, reuse detection, client auth, client_credentials, expiry).
// Exit status 0 = all checks passed. `node selftest.mjs -v` prints the HTTP transcript.

import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const VERBOSE = process.argv.includes('-v') || process.argv.includes('--verbose');
const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const CLIENT_ID = 'selftest-client';
const CLIENT_SECRET = 'selftest-secret';
const REDIRECT_URI = 'http://127.0.0.1:9/callback';

const children = new Set();
let checks = 0;
// Never leave a server behind, whatever way this process ends.
process.on('exit', () => { for (const c of children) c.kill('SIGKILL'); });
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => process.exit(130));

function log(...a) {
  if (VERBOSE) console.error(...a);
}
function assert(cond, msg) {
  checks += 1;
  if (!cond) throw new Error(`check failed: ${msg}`);
  log(`  ok: ${msg}`);
}
const b64url = (buf) => Buffer.from(buf).toString('base64url');

async function startServer(extra = []) {
  const child = spawn(process.execPath, [
    SERVER, '--port', '0',
    '--client-id', CLIENT_ID, '--client-secret', CLIENT_SECRET,
    '--redirect-uri', `${REDIRECT_URI},http://127.0.0.1:9/other`,
    ...extra,
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  child.on('exit', () => children.delete(child));
  let stderr = '';
  child.stderr.on('data', (d) => {
    stderr += d;
    if (VERBOSE) process.stderr.write(`[server] ${d}`);
  });
  const rl = createInterface({ input: child.stdout });
  const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
  const [line] = await Promise.race([
    once(rl, 'line'),
    once(child, 'exit').then(() => { throw new Error(`server exited early:\n${stderr}`); }),
  ]);
  clearTimeout(timer);
  const info = JSON.parse(line);
  rl.on('line', (l) => { throw new Error(`unexpected extra stdout line from server: ${l}`); });
  if (!(info.issuer === `http://127.0.0.1:${info.port}` && Number.isInteger(info.port) && info.port > 0)) {
    throw new Error(`bad ready line: ${line}`);
  }
  return { child, ...info };
}

async function stopServer(child) {
  const exited = once(child, 'exit');
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 5000);
  const [code, signal] = await exited;
  clearTimeout(t);
  return { code, signal };
}

// ---- minimal browser: cookie jar with path matching, manual redirects ----
class Browser {
  constructor() { this.jar = new Map(); } // key name|path -> {name, value, path, expires}

  cookieHeader(url) {
    const now = Date.now();
    const out = [];
    for (const [k, c] of this.jar) {
      if (c.expires !== undefined && c.expires <= now) { this.jar.delete(k); continue; }
      const p = c.path;
      if (url.pathname === p || url.pathname.startsWith(p.endsWith('/') ? p : `${p}/`)) {
        out.push(`${c.name}=${c.value}`);
      }
    }
    return out.join('; ');
  }

  store(url, res) {
    for (const sc of res.headers.getSetCookie()) {
      const [pair, ...attrs] = sc.split(';').map((s) => s.trim());
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq);
      const value = pair.slice(eq + 1);
      let path = url.pathname.replace(/\/[^/]*$/, '') || '/';
      let expires;
      for (const a of attrs) {
        const [k, v = ''] = a.split('=');
        const key = k.toLowerCase();
        if (key === 'path') path = v || '/';
        else if (key === 'expires') expires = Date.parse(v);
        else if (key === 'max-age') expires = Date.now() + Number(v) * 1000;
      }
      const k = `${name}|${path}`;
      if (value === '' || (expires !== undefined && expires <= Date.now())) this.jar.delete(k);
      else this.jar.set(k, { name, value, path, expires });
      log(`    set-cookie ${name} path=${path}${value === '' ? ' (deleted)' : ''}`);
    }
  }

  async request(method, url, body) {
    const u = new URL(url);
    const headers = { accept: 'text/html' };
    const cookie = this.cookieHeader(u);
    if (cookie) headers.cookie = cookie;
    if (body) headers['content-type'] = 'application/x-www-form-urlencoded';
    log(`> ${method} ${u.pathname}${u.search ? `?${u.search.slice(1, 60)}...` : ''}${cookie ? `  [cookie: ${cookie.split('; ').map((c) => c.split('=')[0]).join(', ')}]` : ''}${body ? `  body: ${body}` : ''}`);
    const res = await fetch(u, { method, headers, body, redirect: 'manual' });
    log(`< ${res.status} ${res.headers.get('location') ? `Location: ${res.headers.get('location').slice(0, 100)}` : res.headers.get('content-type')}`);
    this.store(u, res);
    return res;
  }
}

function parseForm(html, baseUrl) {
  const start = html.indexOf('<form');
  if (start < 0) return undefined;
  const end = html.indexOf('</form>', start);
  const form = html.slice(start, end);
  const attr = (tag, name) => {
    const m = tag.match(new RegExp(`\\s${name}="([^"]*)"`));
    return m ? m[1].replace(/&amp;/g, '&').replace(/&#x2F;/g, '/').replace(/&quot;/g, '"') : undefined;
  };
  const formTag = form.slice(0, form.indexOf('>') + 1);
  const inputs = [...form.matchAll(/<input\b[^>]*>/g)].map((m) => ({
    name: attr(m[0], 'name'), type: attr(m[0], 'type') ?? 'text', value: attr(m[0], 'value') ?? '',
  }));
  return {
    action: new URL(attr(formTag, 'action') ?? baseUrl, baseUrl).href,
    method: (attr(formTag, 'method') ?? 'get').toUpperCase(),
    inputs,
  };
}

// Walks the login dance; returns the redirect-URI URL (not requested).
async function signIn(issuer, authorizeUrl, login, password) {
  const browser = new Browser();
  const origin = new URL(issuer).origin;
  let res = await browser.request('GET', authorizeUrl);
  let url = authorizeUrl;
  const seen = [];
  for (let step = 0; step < 20; step += 1) {
    if ([302, 303, 307].includes(res.status)) {
      const next = new URL(res.headers.get('location'), url);
      if (next.origin !== origin) return { redirect: next, seen };
      url = next.href;
      res = await browser.request('GET', url);
      continue;
    }
    const html = await res.text();
    assert(res.status === 200, `interaction page ${url} is 200 (got ${res.status}: ${html.slice(0, 300)})`);
    const form = parseForm(html, url);
    assert(form && form.method === 'POST', 'page has a POST form');
    const fields = new URLSearchParams();
    const prompt = form.inputs.find((i) => i.name === 'prompt')?.value;
    seen.push(prompt);
    for (const i of form.inputs) {
      if (!i.name) continue;
      if (i.name === 'login') fields.set('login', login);
      else if (i.name === 'password') fields.set('password', password);
      else fields.set(i.name, i.value);
    }
    url = form.action;
    res = await browser.request('POST', url, fields.toString());
  }
  throw new Error('too many steps in the login dance');
}

function pkce() {
  const verifier = b64url(randomBytes(32));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  return { verifier, challenge };
}

async function tokenRequest(issuer, params, { auth = 'basic', id = CLIENT_ID, secret = CLIENT_SECRET } = {}) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  const body = new URLSearchParams(params);
  if (auth === 'basic') {
    headers.authorization = `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
  } else {
    body.set('client_id', id);
    body.set('client_secret', secret);
  }
  const res = await fetch(`${issuer}/token`, { method: 'POST', headers, body });
  const text = await res.text();
  log(`  token ${params.grant_type} -> ${res.status} ${text.slice(0, 200)}`);
  return { status: res.status, json: JSON.parse(text), headers: res.headers };
}

async function userinfo(issuer, at) {
  const res = await fetch(`${issuer}/me`, { headers: { authorization: `Bearer ${at}` } });
  const text = await res.text();
  log(`  userinfo -> ${res.status} ${text.slice(0, 200)} ${res.headers.get('www-authenticate') ?? ''}`);
  return { status: res.status, body: text, wwwAuthenticate: res.headers.get('www-authenticate') };
}

async function authorizeAndExchange(issuer, login, { redirectUri = REDIRECT_URI } = {}) {
  const { verifier, challenge } = pkce();
  const state = b64url(randomBytes(12));
  const q = new URLSearchParams({
    response_type: 'code',
    client_id: CLIENT_ID,
    redirect_uri: redirectUri,
    scope: 'openid profile email',
    state,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  });
  const { redirect, seen } = await signIn(issuer, `${issuer}/auth?${q}`, login, 'any-password');
  assert(seen.join(',') === 'login,consent', `login then consent forms were shown (saw ${seen})`);
  assert(`${redirect.origin}${redirect.pathname}` === redirectUri, `redirected to redirect_uri (${redirect.href})`);
  assert(redirect.searchParams.get('state') === state, 'state comes back');
  assert(redirect.searchParams.get('iss') === issuer, 'iss parameter is the issuer');
  const code = redirect.searchParams.get('code');
  assert(code, 'code present');
  const tok = await tokenRequest(issuer, {
    grant_type: 'authorization_code', code, redirect_uri: redirectUri, code_verifier: verifier,
  });
  return { code, verifier, redirectUri, tok };
}

async function mainChecks() {
  const { child, issuer } = await startServer();
  try {
    const disc = await (await fetch(`${issuer}/.well-known/openid-configuration`)).json();
    assert(disc.authorization_endpoint === `${issuer}/auth`, 'authorization_endpoint /auth');
    assert(disc.token_endpoint === `${issuer}/token`, 'token_endpoint /token');
    assert(disc.userinfo_endpoint === `${issuer}/me`, 'userinfo_endpoint /me');
    assert(disc.revocation_endpoint === `${issuer}/token/revocation`, 'revocation_endpoint /token/revocation');

    const { code, verifier, tok } = await authorizeAndExchange(issuer, 'alice');
    assert(tok.status === 200, `code exchange 200 (${JSON.stringify(tok.json)})`);
    const t0 = tok.json;
    assert(typeof t0.access_token === 'string' && t0.token_type === 'Bearer', 'access_token + Bearer');
    assert(typeof t0.expires_in === 'number' && t0.expires_in > 0 && t0.expires_in <= 60, `expires_in is a number <= 60 (${t0.expires_in})`);
    assert(typeof t0.refresh_token === 'string', 'refresh_token issued without offline_access');
    assert(typeof t0.id_token === 'string', 'id_token issued');
    assert(t0.scope === 'openid profile email', `scope echoed (${t0.scope})`);

    const ui = await userinfo(issuer, t0.access_token);
    const claims = JSON.parse(ui.body);
    assert(ui.status === 200 && claims.sub === 'alice' && claims.email === 'alice@example.test' && claims.name === 'alice', 'userinfo sub/name/email');

    // Code replay -> invalid_grant (and it revokes that grant; tokens above die). Use a second sign-in for the rest.
    const replay = await tokenRequest(issuer, {
      grant_type: 'authorization_code', code, redirect_uri: REDIRECT_URI, code_verifier: verifier,
    });
    assert(replay.status === 400 && replay.json.error === 'invalid_grant', 'code replay -> invalid_grant');
    assert((await userinfo(issuer, t0.access_token)).status === 401, 'code replay revoked the grant (access token dead)');
    const r0 = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: t0.refresh_token });
    assert(r0.status === 400 && r0.json.error === 'invalid_grant', 'code replay revoked the grant (refresh token dead)');

    const second = await authorizeAndExchange(issuer, 'bob@example.org');
    assert(second.tok.status === 200, 'second code exchange 200');
    const rt1 = second.tok.json.refresh_token;
    const at1 = second.tok.json.access_token;

    // Refresh #1 with client_secret_post (client registered as basic), refresh #2 with basic.
    const r1 = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: rt1 }, { auth: 'post' });
    assert(r1.status === 200, `refresh #1 200 (${JSON.stringify(r1.json)})`);
    const rt2 = r1.json.refresh_token;
    assert(typeof rt2 === 'string' && rt2 !== rt1, 'refresh #1 rotated the refresh token');
    assert(r1.json.access_token !== at1 && typeof r1.json.expires_in === 'number', 'refresh #1 new access token');
    assert(typeof r1.json.id_token === 'string', 'refresh returns an id_token (openid scope)');

    const r2 = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: rt2 });
    assert(r2.status === 200, 'refresh #2 200');
    const rt3 = r2.json.refresh_token;
    assert(typeof rt3 === 'string' && rt3 !== rt2 && rt3 !== rt1, 'refresh #2 rotated again');
    const ui2 = await userinfo(issuer, r2.json.access_token);
    assert(ui2.status === 200 && JSON.parse(ui2.body).sub === 'bob@example.org', 'refreshed access token works at /me (sub = login)');

    // Reuse of an old refresh token: invalid_grant, and the whole grant is revoked.
    const reuse = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: rt1 });
    assert(reuse.status === 400, 'reuse of rt1 -> 400');
    assert(reuse.json.error === 'invalid_grant' && reuse.json.error_description === 'grant request is invalid',
      `reuse body ${JSON.stringify(reuse.json)}`);
    const after = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: rt3 });
    assert(after.status === 400 && after.json.error === 'invalid_grant', 'newest refresh token rt3 is dead after reuse');
    assert((await userinfo(issuer, r2.json.access_token)).status === 401, 'newest access token is dead after reuse');

    // Client auth.
    const bad = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: 'x' }, { secret: 'wrong' });
    assert(bad.status === 401 && bad.json.error === 'invalid_client', `wrong secret -> 401 invalid_client (${JSON.stringify(bad.json)})`);
    const unknown = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: 'nope' });
    assert(unknown.status === 400 && unknown.json.error === 'invalid_grant', 'unknown refresh token -> invalid_grant');

    // Revocation of a refresh token.
    const third = await authorizeAndExchange(issuer, 'carol');
    const rev = await fetch(`${issuer}/token/revocation`, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        authorization: `Basic ${Buffer.from(`${CLIENT_ID}:${CLIENT_SECRET}`).toString('base64')}`,
      },
      body: new URLSearchParams({ token: third.tok.json.refresh_token, token_type_hint: 'refresh_token' }),
    });
    assert(rev.status === 200, 'revocation 200');
    const afterRev = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: third.tok.json.refresh_token });
    assert(afterRev.status === 400 && afterRev.json.error === 'invalid_grant', 'revoked refresh token -> invalid_grant');

    // client_credentials client.
    const cc = await tokenRequest(issuer, { grant_type: 'client_credentials' }, { id: `${CLIENT_ID}-cc`, secret: `${CLIENT_SECRET}-cc` });
    assert(cc.status === 200 && typeof cc.json.access_token === 'string' && cc.json.expires_in === 60 && !cc.json.refresh_token,
      'client_credentials token (no refresh token)');
    const ccWrong = await tokenRequest(issuer, { grant_type: 'client_credentials' });
    assert(ccWrong.status === 400 && ccWrong.json.error === 'invalid_request', `main client may not use client_credentials (${JSON.stringify(ccWrong.json)})`);
  } finally {
    const { code, signal } = await stopServer(child);
    assert(code === 0, `server exits 0 on SIGTERM (code ${code}, signal ${signal})`);
  }
}

async function expiryChecks() {
  const { child, issuer } = await startServer(['--access-ttl', '1', '--token-auth', 'post']);
  try {
    const { tok } = await authorizeAndExchange(issuer, 'dave');
    assert(tok.status === 200 && tok.json.expires_in <= 1, `access-ttl 1 -> expires_in ${tok.json.expires_in}`);
    await new Promise((r) => { setTimeout(r, 2200); });
    const ui = await userinfo(issuer, tok.json.access_token);
    assert(ui.status === 401, `expired access token -> 401 at /me (clockTolerance 0) [${ui.wwwAuthenticate}]`);
    const r = await tokenRequest(issuer, { grant_type: 'refresh_token', refresh_token: tok.json.refresh_token }, { auth: 'post' });
    assert(r.status === 200 && r.json.refresh_token !== tok.json.refresh_token, 'refresh after access expiry works');
  } finally {
    await stopServer(child);
  }
}

try {
  await mainChecks();
  await expiryChecks();
  console.log(`selftest: ${checks} checks passed`);
  process.exit(0);
} catch (err) {
  console.error(`selftest FAILED: ${err.stack ?? err}`);
  for (const c of children) c.kill('SIGKILL');
  process.exit(1);
}
