// Signs in to the Exact Online simulator in real Chromium, the way a person does: the start page's e-mail
// field, the B2C pages that the page's own script builds from SETTINGS/SA_FIELDS (posted by XHR), the
// authenticator code, the page that posts itself back to /signin-azureb2c, the consent button. Fields are found
// as a person (or a password manager) finds them — by type and autocomplete, not by the simulator's ids — so a
// page whose ids changed still works here.
//
//   node exact-signin.mjs --authorize-url URL --username U --password P
//        [--totp-secret BASE32 | --totp-code 123456] [--email-code 123456] [--timeout-ms 30000]
//
// Prints one JSON line and exits 0 when the browser reached the app's redirect_uri:
//   {"result":"landed","url":"…","code":"…","state":"…","pages":[…],"blocked":[]}
// or exits 2 when the sign-in stopped where a person must act:
//   {"result":"stopped","reason":"password_rejected|code_rejected|locked|captcha|email_code|unknown_page|timeout",
//    "message":"…","url":"…","pages":[…]}
// Exit 1: the browser could not run (message on stderr). The redirect_uri itself is answered inside the browser
// (nothing listens there in a test): no request leaves loopback.

import { launchChromium } from './launch.mjs';
import { Stop, walkExactSignIn } from './exact-pages.mjs';

export { totp } from './exact-pages.mjs';

function args(argv) {
  const out = {};
  for (let i = 2; i < argv.length; i += 2) {
    if (!argv[i].startsWith('--') || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    out[argv[i].slice(2)] = argv[i + 1];
  }
  for (const k of ['authorize-url', 'username', 'password']) if (!out[k]) throw new Error(`--${k} is required`);
  return out;
}

async function main() {
  const a = args(process.argv);
  const timeoutMs = Number(a['timeout-ms'] || 30000);
  const authorize = new URL(a['authorize-url']);
  const redirectUri = authorize.searchParams.get('redirect_uri');
  if (!redirectUri) throw new Error('the authorize URL has no redirect_uri');
  const { context, close, blocked } = await launchChromium();
  const pages = [];
  let landed = null;
  try {
    const page = context.pages()[0] || (await context.newPage());
    page.setDefaultTimeout(timeoutMs);
    const app = redirectUri.split(/[?#]/)[0];
    await page.route((u) => u.href.split(/[?#]/)[0] === app, (route) => {
      landed = route.request().url();
      return route.fulfill({ status: 200, contentType: 'text/html', body: '<html><body>landed</body></html>' });
    });
    page.on('framenavigated', (f) => { if (f === page.mainFrame()) pages.push(f.url()); });
    await page.goto(authorize.href, { waitUntil: 'domcontentloaded' }).catch((e) => { if (!landed) throw e; });
    const creds = {
      username: a.username, password: a.password, totpSecret: a['totp-secret'], totpCode: a['totp-code'],
      emailCode: a['email-code'],
    };
    await walkExactSignIn(page, creds, () => landed !== null, timeoutMs);
    if (!landed) throw new Stop('unknown_page', `no way forward at ${page.url()}`);
    const u = new URL(landed);
    console.log(JSON.stringify({
      result: 'landed', url: landed, code: u.searchParams.get('code'), state: u.searchParams.get('state'), pages, blocked,
    }));
    return 0;
  } catch (e) {
    if (!(e instanceof Stop)) throw e;
    const url = context.pages()[0]?.url();
    console.log(JSON.stringify({ result: 'stopped', reason: e.reason, message: e.message, url, pages, blocked }));
    return 2;
  } finally {
    await close();
  }
}

main().then((code) => process.exit(code), (e) => {
  console.error(`exact-signin: ${e && e.stack || e}`);
  process.exit(1);
});
