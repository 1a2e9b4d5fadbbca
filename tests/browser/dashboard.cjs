// The add-on dashboard in a real browser: SSO login as the platform's page posts it, the
// plugin's page, a form post without and with the CSRF token, session expiry, and the host's
// own page for a plugin without a handler. Input (argv[2], JSON): base, chromium, flags,
// screenshots, login {addon, fields}, builtin {addon, fields}, sessionSecs. Prints what it
// saw as one JSON line; the Rust test asserts on it.
const { chromium } = require('playwright-core');

const input = JSON.parse(process.argv[2]);
const seen = {};

// What the platform does: the user's browser posts the signed login form to the add-on.
async function ssoLogin(page, { addon, fields }) {
  const inputs = Object.entries(fields)
    .map(([k, v]) => `<input type="hidden" name="${k}" value="${v}"/>`)
    .join('');
  await page.setContent(
    `<form id="f" method="post" action="${input.base}/addons/${addon}/login">${inputs}</form>`
  );
  const [response] = await Promise.all([
    page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
    page.evaluate(() => document.getElementById('f').submit()),
  ]);
  return response;
}

const text = (page, selector) => page.locator(selector).first().textContent({ timeout: 5000 }).catch(() => null);

(async () => {
  const browser = await chromium.launch({ executablePath: input.chromium, args: input.flags, headless: true });
  try {
    const context = await browser.newContext({ viewport: { width: 1000, height: 700 } });
    // Nothing leaves the machine (Beam's script on unpkg.com is not fetched).
    await context.route(/^https?:\/\/(?!127\.0\.0\.1)/, (route) => route.abort());
    const page = await context.newPage();
    // What the pages' content security policy refused (the Beam header's inline script must
    // carry the answer's nonce).
    seen.csp = [];
    page.on('console', (m) => /Content Security Policy/.test(m.text()) && seen.csp.push(m.text()));

    const loginAt = Date.now();
    const login = await ssoLogin(page, input.login);
    seen.login = { status: login.status(), title: await text(page, '#title'), plan: await text(page, '#plan') };
    seen.beam = await page.locator('script[src*="@bitrise/beam"]').count();
    const cookies = await context.cookies();
    seen.cookie = cookies.map((c) => ({ name: c.name, httpOnly: c.httpOnly, sameSite: c.sameSite, path: c.path }));
    await page.screenshot({ path: `${input.screenshots}/dashboard.png`, fullPage: true });

    // A form post whose CSRF token was removed: refused.
    const [forged] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
      page.evaluate(() => {
        document.querySelector('input[name="_csrf"]').remove();
        document.querySelector('form').submit();
      }),
    ]);
    seen.forged = { status: forged.status(), body: await page.locator('body').textContent() };

    // Back to the dashboard (the cookie is sent), and the real form.
    const again = await page.goto(`${input.base}/addons/${input.login.addon}/dashboard/`, { waitUntil: 'domcontentloaded' });
    seen.again = { status: again.status(), calls: await text(page, '#calls') };
    const [rotated] = await Promise.all([
      page.waitForNavigation({ waitUntil: 'domcontentloaded' }),
      page.click('#rotate'),
    ]);
    seen.rotated = { status: rotated.status(), notice: await text(page, '#rotated'), secret: await text(page, '#secret') };
    await page.screenshot({ path: `${input.screenshots}/dashboard-rotated.png`, fullPage: true });

    // After the session's lifetime, the dashboard asks to sign in again.
    // (Sessions expire on whole seconds: one more covers the rounding.)
    const wait = loginAt + (input.sessionSecs + 1) * 1000 - Date.now() + 200;
    seen.beforeExpiry = wait > 200;
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    const expired = await page.goto(`${input.base}/addons/${input.login.addon}/dashboard/`, { waitUntil: 'domcontentloaded' });
    seen.expired = { status: expired.status(), message: await text(page, '#signed-out') };

    // A plugin without a handler: the host's own page.
    const other = await context.newPage();
    const builtin = await ssoLogin(other, input.builtin);
    seen.builtin = {
      status: builtin.status(),
      brand: await text(other, '.brand'),
      plan: await text(other, '.plan'),
      vars: await other.locator('code').allTextContents(),
      background: await other.evaluate(() => getComputedStyle(document.body).backgroundColor),
    };
    await other.screenshot({ path: `${input.screenshots}/builtin.png`, fullPage: true });
  } finally {
    await browser.close();
  }
  console.log(JSON.stringify(seen));
})().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
