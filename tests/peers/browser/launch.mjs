// Starts Debian's Chromium (/usr/bin/chromium) headless through playwright-core, in a fresh profile, with
// the flags that keep it from opening any connection of its own (the machine's network is closed: background
// updates, sync and QUIC would only be refused). Every request to anything but loopback is aborted, so a page
// under test can never reach the outside either.
//
//   import { launchChromium } from './launch.mjs';
//   const { context, close } = await launchChromium();
//   const page = await context.newPage();
//   ...
//   await close();
//
// CHROMIUM_PATH overrides the executable.

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]', '::1']);

/** True for http(s) URLs on loopback, and for the browser's own schemes (about:, data:, blob:). */
export function isLoopback(url) {
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return true;
    return LOOPBACK.has(u.hostname);
  } catch {
    return false;
  }
}

/**
 * Launches Chromium with a fresh --user-data-dir (playwright-core passes it for a persistent context).
 * Returns { context, close, blocked }: `blocked` lists the non-loopback URLs that were aborted.
 */
export async function launchChromium({ args = [], timeoutMs = 30000 } = {}) {
  const userDataDir = await mkdtemp(join(tmpdir(), 'chainkeeper-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: [...CHROMIUM_ARGS, ...args],
      timeout: timeoutMs,
    });
  } catch (e) {
    await rm(userDataDir, { recursive: true, force: true });
    throw e;
  }
  const blocked = [];
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLoopback(url)) return route.fallback();
    blocked.push(url);
    return route.abort('blockedbyclient');
  });
  const close = async () => {
    await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true });
  };
  return { context, close, blocked };
}
