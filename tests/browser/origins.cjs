// Two add-ons on one host, each on its own origin (`server.web_origin`), in a real browser:
// the user logs in to both through Bitrise's SSO (posted to the host's origin, handed over
// to each add-on's origin), then the `attacker` add-on's page runs attack.js (served by the
// misbehave test plugin, tests/guests/misbehave/attack.js)
// against `victim`, and the same script runs on victim's own page as the control.
// Input (argv[2], JSON): base, origins {victim, attacker}, logins {victim, attacker} (the
// signed form fields), chromium, flags, screenshots. Prints what it saw as one JSON line.
const { chromium } = require('playwright-core');

const input = JSON.parse(process.argv[2]);
const seen = {};

// In a blank page of `context`: a dashboard's own policy (`form-action 'self'`) would not let
// it post to the host.
async function ssoLogin(context, addon, fields) {
  const page = await context.newPage();
  const inputs = Object.entries(fields)
    .map(([k, v]) => `<input type="hidden" name="${k}" value="${v}"/>`)
    .join('');
  await page.setContent(`<form id="f" method="post" action="${input.base}/addons/${addon}/login">${inputs}</form>`);
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
    page.evaluate(() => document.getElementById('f').submit()),
  ]);
  const seen = { status: response.status(), url: page.url(), resource: await text(page, '#resource') };
  await page.close();
  return seen;
}

const text = (page, selector) => page.locator(selector).first().textContent({ timeout: 5000 }).catch(() => null);

async function attack(page, from, target) {
  await page.goto(`${from}/dashboard/attack?target=${encodeURIComponent(target)}`, { waitUntil: 'domcontentloaded' });
  await page.waitForFunction(() => document.documentElement.dataset.done === '1', null, { timeout: 15000 });
  return JSON.parse(await page.evaluate(() => document.documentElement.dataset.result));
}

async function visit(page, url) {
  const response = await page.goto(url, { waitUntil: 'domcontentloaded' });
  return { status: response.status(), url: page.url(), body: (await page.locator('body').textContent()).trim() };
}

(async () => {
  const browser = await chromium.launch({ executablePath: input.chromium, args: input.flags, headless: true });
  try {
    const context = await browser.newContext();
    // Nothing leaves the machine: only the host and the add-ons' *.localhost origins.
    await context.route(/^https?:\/\/(?!127\.0\.0\.1[:/]|[a-z0-9-]+\.localhost[:/])/, (route) => route.abort());
    const page = await context.newPage();
    // Every answer and failure on stderr, for a failing run's report.
    page.on('response', (r) => console.error(r.status(), r.url()));
    page.on('requestfailed', (r) => console.error('failed', r.url(), r.failure() && r.failure().errorText));
    const { victim, attacker } = input.origins;

    seen.victimLogin = await ssoLogin(context, 'victim', input.logins.victim);
    seen.attackerLogin = await ssoLogin(context, 'attacker', input.logins.attacker);
    seen.cookies = (await context.cookies()).map((c) => ({ name: c.name, domain: c.domain, path: c.path }));
    // The handover link again, in another browser: used, it opens nothing.
    const stranger = await browser.newContext();
    seen.replayedLink = await visit(await stranger.newPage(), seen.victimLogin.url);
    await stranger.close();
    // The old path-based URL redirects to the add-on's origin (where the session is).
    seen.oldPath = await visit(page, `${input.base}/addons/victim/dashboard/`);

    seen.cross = await attack(page, attacker, victim);
    await page.screenshot({ path: `${input.screenshots}/attack-cross-origin.png` });
    seen.victimAfterCross = await visit(page, `${victim}/dashboard/`);
    seen.victimCookiesAfterCross = JSON.parse((await visit(page, `${victim}/dashboard/echo`)).body).cookie;
    seen.markerAfterCross = (await visit(page, `${victim}/dashboard/marker`)).body;

    // Control: the same script on victim's own origin succeeds at each step.
    seen.own = await attack(page, victim, victim);
    seen.victimAfterOwn = await visit(page, `${victim}/dashboard/`);
    seen.victimCookiesAfterOwn = JSON.parse((await visit(page, `${victim}/dashboard/echo`)).body).cookie;
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
