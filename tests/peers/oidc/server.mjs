#!/usr/bin/env node
// Real OpenID Connect / OAuth 2.0 peer for chainkeeper tests: oidc-provider with an
// in-memory store, the built-in HTML login + consent forms (devInteractions),
// refresh-token rotation with reuse detection, and a client_credentials client.
//
// stdout carries exactly one line, {"issuer":"http://127.0.0.1:PORT","port":PORT},
// once the server listens. Everything else (oidc-provider notices, errors) goes to stderr.
// See README.md for flags and the login dance.

import http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints NOTICEs with console.info (stdout). Keep stdout for the JSON line only.
for (const m of ['log', 'info', 'debug']) {
  console[m] = (...args) => console.error(...args);
}

function die(msg) {
  process.stderr.write(`oidc peer: ${msg}\n`);
  process.exit(2);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '0' },
      'client-id': { type: 'string', default: 'chainkeeper' },
      'client-secret': { type: 'string', default: 'chainkeeper-secret' },
      'redirect-uri': { type: 'string', multiple: true },
      'token-auth': { type: 'string', default: 'basic' },
      'access-ttl': { type: 'string', default: '60' },
      'refresh-ttl': { type: 'string', default: String(24 * 60 * 60) },
      'cc-client-id': { type: 'string' },
      'cc-client-secret': { type: 'string' },
      'ropc-password': { type: 'string' },
      // A sign-in client for chainkeeper's web console (authorization code + PKCE), registered when a redirect
      // URI is given.
      'console-client-id': { type: 'string' },
      'console-client-secret': { type: 'string' },
      'console-redirect-uri': { type: 'string', multiple: true },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  die(err.message);
}

function posInt(name, raw, { allowZero = false } = {}) {
  if (!/^\d+$/.test(raw)) die(`--${name} must be a non-negative integer, got ${JSON.stringify(raw)}`);
  const n = Number(raw);
  if (!allowZero && n === 0) die(`--${name} must be > 0`);
  return n;
}

const port = posInt('port', args.port, { allowZero: true });
if (port > 65535) die('--port out of range');
const accessTtl = posInt('access-ttl', args['access-ttl']);
const refreshTtl = posInt('refresh-ttl', args['refresh-ttl']);
const tokenAuth = {
  basic: 'client_secret_basic',
  post: 'client_secret_post',
  client_secret_basic: 'client_secret_basic',
  client_secret_post: 'client_secret_post',
}[args['token-auth']];
if (!tokenAuth) die(`--token-auth must be basic or post, got ${JSON.stringify(args['token-auth'])}`);

const redirectUris = (args['redirect-uri'] ?? ['http://127.0.0.1:3000/oauth/callback'])
  .flatMap((v) => v.split(','))
  .map((v) => v.trim())
  .filter(Boolean);
if (redirectUris.length === 0) die('at least one --redirect-uri is required');

const clientId = args['client-id'];
const clientSecret = args['client-secret'];
const ccClientId = args['cc-client-id'] ?? `${clientId}-cc`;
const ccClientSecret = args['cc-client-secret'] ?? `${clientSecret}-cc`;
// The resource-owner password grant (not built into oidc-provider; registered below): every user's password.
const ropcPassword = args['ropc-password'] ?? 'correct horse battery staple';
const consoleClientId = args['console-client-id'] ?? `${clientId}-console`;
const consoleClientSecret = args['console-client-secret'] ?? `${clientSecret}-console`;
const consoleRedirectUris = (args['console-redirect-uri'] ?? []).flatMap((v) => v.split(',')).map((v) => v.trim()).filter(Boolean);

// A login name may carry groups after `+`: `alice+ck-admins+ck-readers` signs in as `alice+ck-admins+ck-readers`
// (the sub) named `alice`, in groups ["ck-admins", "ck-readers"] (the `groups` claim, with scope `profile`).
function groupsOf(login) {
  return login.split('+').slice(1).filter(Boolean);
}

const { default: Provider } = await import('oidc-provider');

const server = http.createServer();
server.on('clientError', (err, socket) => {
  socket.destroy(err);
});

await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, args.host, () => {
    server.off('error', reject);
    resolve();
  });
});

const actualPort = server.address().port;
const issuer = `http://${args.host}:${actualPort}`;

const LONG = Math.max(14 * 24 * 60 * 60, refreshTtl);

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      client_name: 'chainkeeper (test)',
      application_type: 'web',
      redirect_uris: redirectUris,
      response_types: ['code'],
      grant_types: ['authorization_code', 'refresh_token', 'password'],
      token_endpoint_auth_method: tokenAuth,
      scope: 'openid profile email offline_access',
    },
    {
      client_id: ccClientId,
      client_secret: ccClientSecret,
      client_name: 'chainkeeper service (test)',
      redirect_uris: [],
      response_types: [],
      grant_types: ['client_credentials'],
      token_endpoint_auth_method: tokenAuth,
    },
    ...(consoleRedirectUris.length === 0
      ? []
      : [
          {
            client_id: consoleClientId,
            client_secret: consoleClientSecret,
            client_name: 'chainkeeper console (test)',
            application_type: 'web',
            redirect_uris: consoleRedirectUris,
            response_types: ['code'],
            grant_types: ['authorization_code'],
            token_endpoint_auth_method: 'client_secret_basic',
            scope: 'openid profile email',
          },
        ]),
  ],
  // Any login is accepted; the login name is the account id and `sub`.
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        const name = id.split('+')[0];
        return {
          sub: id,
          name,
          email: name.includes('@') ? name : `${name}@example.test`,
          groups: groupsOf(id),
        };
      },
    };
  },
  claims: {
    openid: ['sub'],
    profile: ['name', 'groups'],
    email: ['email'],
  },
  scopes: ['openid', 'profile', 'email', 'offline_access'],
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
  },
  pkce: {
    required: () => false,
  },
  // No offline_access / prompt=consent dance needed for refresh tokens.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Refresh tokens are not tied to the browser session (they survive it, like offline tokens).
  expiresWithSession: async () => false,
  rotateRefreshToken: true,
  // The ID token carries the scopes' claims (name, email, groups) in the code flow too: the console reads the
  // person's groups from it.
  conformIdTokenClaims: false,
  clockTolerance: 0,
  ttl: {
    AccessToken: accessTtl,
    ClientCredentials: accessTtl,
    RefreshToken: refreshTtl,
    AuthorizationCode: 60,
    IdToken: 60 * 60,
    Interaction: 60 * 60,
    Session: LONG,
    Grant: LONG,
  },
  cookies: {
    keys: ['chainkeeper-oidc-peer-cookie-key'],
  },
});

provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`oidc peer server_error: ${err?.stack ?? err}\n`);
});
for (const ev of ['grant.error', 'authorization.error', 'userinfo.error', 'revocation.error', 'introspection.error']) {
  provider.on(ev, (_ctx, err) => {
    const detail = err?.error_detail ? ` (${err.error_detail})` : '';
    process.stderr.write(`oidc peer ${ev}: ${err?.error ?? err}${detail}\n`);
  });
}

// Resource-owner password grant (RFC 6749 4.3): any username, the one configured password.
const { errors } = await import('oidc-provider');
provider.registerGrantType(
  'password',
  async (ctx) => {
    const { username, password } = ctx.oidc.params;
    if (!username || password !== ropcPassword) {
      throw new errors.InvalidGrant('invalid resource owner credentials');
    }
    const client = ctx.oidc.client;
    const grant = new provider.Grant({ clientId: client.clientId, accountId: username });
    grant.addOIDCScope('openid profile email');
    await grant.save();
    const at = new provider.AccessToken({
      accountId: username,
      client,
      grantId: grant.jti,
      gty: 'password',
      scope: 'openid profile email',
      claims: { userinfo: { sub: null, name: null, email: null } },
    });
    const value = await at.save();
    ctx.body = { access_token: value, expires_in: at.expiration, token_type: 'Bearer', scope: at.scope };
  },
  ['username', 'password', 'scope'],
);

const callback = provider.callback();
server.on('request', callback);

let stopping = false;
function stop() {
  if (stopping) return;
  stopping = true;
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

const line = `${JSON.stringify({ issuer, port: actualPort })}\n`;
process.stdout.write(line, () => {
  process.stderr.write(`oidc peer listening on ${issuer} (client ${clientId}, cc client ${ccClientId})\n`);
});
