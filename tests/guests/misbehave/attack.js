// What a hostile add-on's page tries against another add-on's dashboard (served by the
// `misbehave` test plugin as /dashboard/attack.js; `?target=ORIGIN` names the add-on under
// attack). Each step records what it achieved; `tests/browser/origins.cjs` reads the record
// from `document.documentElement.dataset.result` once `dataset.done` is set.
(async () => {
  const target = new URLSearchParams(location.search).get('target');
  const seen = { from: location.origin, target };
  // 1. Read the other add-on's dashboard with the user's cookies, and its CSRF token.
  let token = 'no-token';
  try {
    const page = await fetch(`${target}/dashboard/`, { credentials: 'include' });
    const text = await page.text();
    seen.read = page.status;
    const found = /name="_csrf" value="([^"]+)"/.exec(text);
    if (found) token = found[1];
    seen.token = !!found;
  } catch (e) {
    seen.read = `blocked: ${e}`;
    seen.token = false;
  }
  // 2. Post its state-changing form with that token (or none), with the user's cookies.
  try {
    await fetch(`${target}/dashboard/write?v=attacked-from-${location.hostname}`, {
      method: 'POST',
      credentials: 'include',
      mode: 'no-cors',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: `_csrf=${encodeURIComponent(token)}`,
    });
    seen.posted = true;
  } catch (e) {
    seen.posted = `blocked: ${e}`;
  }
  // 3. A service worker over the other add-on's pages.
  try {
    await navigator.serviceWorker.register(`${target}/dashboard/sw.js`, { scope: `${target}/dashboard/` });
    seen.worker = 'registered';
  } catch (e) {
    seen.worker = `refused: ${e.name}`;
  }
  // 4. Cookies the plugin itself sets (the host filters them), on this origin.
  try {
    seen.hostile = (await fetch('/dashboard/hostile', { credentials: 'include' })).status;
  } catch (e) {
    seen.hostile = `blocked: ${e}`;
  }
  // 5. Toss cookies at the other add-on: its session cookie in several spellings (which must
  //    neither replace nor hide the real one), and plain ones its plugin would read.
  const domain = target.replace(/^https?:\/\//, '').replace(/:\d+$/, '');
  const parent = domain.split('.').slice(1).join('.');
  for (const cookie of [
    `addon_session=tossed; path=/; domain=${parent}`,
    `ADDON_SESSION=tossed; path=/; domain=${parent}`,
    `addon_session =tossed; path=/; domain=${parent}`,
    `__Host-addon_session=tossed; path=/; secure`,
    `addon_session=tossed; path=/`,
    // Plain cookies for the target's plugin to read: only one set on its own origin reaches it.
    `tossed=1; path=/`,
    `tossed_parent=1; path=/; domain=${parent}`,
  ]) {
    document.cookie = cookie;
  }
  seen.cookies = document.cookie;
  document.documentElement.dataset.result = JSON.stringify(seen);
  document.documentElement.dataset.done = '1';
})();
