// The Exact Online sign-in pages walked in a page that is already on them, as a person does: the start page's
// e-mail field, the B2C pages that the page's own script builds from SETTINGS/SA_FIELDS (posted by XHR), the
// authenticator code, the page that posts itself back to /signin-azureb2c, the consent button. Fields are found as
// a person (or a password manager) finds them — by type and autocomplete, not by the simulator's ids — so a page
// whose ids changed still works here. Used by exact-signin.mjs (the sign-in alone) and console.mjs (the console's
// "Renew authorization", which leaves chainkeeper for these pages and comes back to its callback page).

import { createHmac } from 'node:crypto';

function base32(s) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = 0, value = 0;
  const out = [];
  for (const c of s.toUpperCase().replace(/[\s=-]/g, '')) {
    const v = alphabet.indexOf(c);
    if (v < 0) throw new Error('TOTP secret is not base32');
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) { bits -= 8; out.push((value >>> bits) & 0xff); }
  }
  return Buffer.from(out);
}

/** RFC 6238 (HMAC-SHA1, 30 s, 6 digits), as an authenticator app computes it. */
export function totp(secret, nowMs = Date.now()) {
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(Math.floor(nowMs / 1000 / 30)));
  const h = createHmac('sha1', base32(secret)).update(counter).digest();
  const off = h[h.length - 1] & 0x0f;
  const bin = ((h[off] & 0x7f) << 24) | (h[off + 1] << 16) | (h[off + 2] << 8) | h[off + 3];
  return String(bin % 1000000).padStart(6, '0');
}

/** Where a sign-in stopped because a person must act: `reason` is password_rejected, code_rejected, locked,
 * captcha, email_code, unknown_page or timeout. */
export class Stop extends Error {
  constructor(reason, message) { super(message); this.reason = reason; }
}

const CAPTCHA = 'iframe[src*="recaptcha"], iframe[src*="hcaptcha"], iframe[src*="challenges.cloudflare"], .g-recaptcha, .h-captcha';

async function visible(page, selector) {
  const loc = page.locator(selector);
  const n = await loc.count();
  for (let i = 0; i < n; i++) if (await loc.nth(i).isVisible()) return loc.nth(i);
  return null;
}

/**
 * Walks the sign-in pages in `page` until `done()` is true (the browser reached the app again).
 * `creds`: { username, password, totpSecret?, totpCode?, emailCode? }. Throws `Stop` where a person must act.
 */
export async function walkExactSignIn(page, creds, done, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  const trace = (what) => { if (process.env.CONSOLE_TRACE) process.stderr.write(`[exact-pages +${Date.now() - deadline + timeoutMs} ms] ${what}\n`); };
  let lastStep = '';
  const settle = async () => { await page.waitForLoadState('networkidle', { timeout: 5000 }).catch(() => {}); };
  // Click, then wait until the page moves on or shows an error (B2C answers by XHR, then navigates).
  const submit = async (button, step) => {
    lastStep = step;
    trace(`submit ${step}`);
    const before = page.url();
    const errorShown = page.locator('.error').filter({ hasText: /\S/ }).first();
    await Promise.all([
      Promise.race([
        page.waitForURL((u) => u.href !== before, { timeout: timeoutMs }).catch(() => {}),
        errorShown.waitFor({ state: 'visible', timeout: timeoutMs }).catch(() => {}),
      ]),
      button.click(),
    ]);
    await settle();
    trace(`after ${step}: ${page.url().slice(0, 80)}`);
    if (done()) return;
    const err = await visible(page, '.error');
    if (err && page.url() === before) {
      const message = (await err.innerText()).trim();
      if (/locked/i.test(message)) throw new Stop('locked', message);
      throw new Stop(step === 'password' ? 'password_rejected' : step === 'code' ? 'code_rejected' : 'unknown_page', message);
    }
  };

  await settle();
  trace('start');
  for (let i = 0; i < 15 && !done(); i++) {
    trace(`loop ${i} at ${page.url().slice(0, 80)}`);
    if (Date.now() > deadline) throw new Stop('timeout', `no redirect to the app within ${timeoutMs} ms`);
    const body = await page.content();
    if (await page.locator(CAPTCHA).count() || /Just a moment|verify you are human|checking your browser/i.test(body)) {
      throw new Stop('captcha', await page.title());
    }
    const email = await visible(page, 'input[autocomplete~="username"], input[type="email"]');
    const password = await visible(page, 'input[type="password"]');
    const code = await visible(page, 'input[autocomplete="one-time-code"]');
    const allow = await visible(page, 'button[name="Allow"][value="yes"]');
    const button = await visible(page, 'button[type="submit"], input[type="submit"]');
    if (password) {
      if (email && !(await email.inputValue())) await email.fill(creds.username);
      await password.fill(creds.password);
      await submit(button, 'password');
    } else if (email) {
      await email.fill(creds.username);
      await submit(button, 'username');
    } else if (code) {
      const text = await page.locator('body').innerText();
      let value;
      if (/e-?mail/i.test(text) && !/authenticator/i.test(text)) {
        if (!creds.emailCode) throw new Stop('email_code', 'a code sent by e-mail is asked for');
        value = creds.emailCode;
      } else {
        value = creds.totpCode || (creds.totpSecret && totp(creds.totpSecret));
        if (!value) throw new Stop('unknown_page', 'a verification code is asked for and none was given');
      }
      await code.fill(value);
      await submit(button, 'code');
    } else if (allow) {
      await submit(allow, 'consent');
    } else {
      // A page that posts itself (the form_post back to the start host) is still on its way.
      const here = page.url();
      await page.waitForURL((u) => u.href !== here, { timeout: 3000 }).catch(() => {});
      await settle();
      if (!done() && i > 12) throw new Stop('unknown_page', `${await page.title()} at ${page.url()} (after ${lastStep})`);
    }
  }
  if (!done()) throw new Stop('unknown_page', `no way forward at ${page.url()}`);
}
