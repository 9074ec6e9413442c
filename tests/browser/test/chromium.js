// Debian's Chromium, headless, as every browser test drives it (never a browser download of
// playwright's own), and a page that records what a person would see go wrong.
import { chromium } from 'playwright-core';

export function launchChromium() {
  return chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

/// A new page of `browser` that pushes every failed request or answer >= 400 into `failures`
/// (when given) and every console error into `consoleErrors`.
export async function watchedPage(browser, { failures, consoleErrors, viewport }) {
  const page = await browser.newPage(viewport ? { viewport } : {});
  if (failures) {
    page.on('requestfailed', (request) => failures.push(`${request.url()}: ${request.failure()?.errorText}`));
    page.on('response', (response) => { if (response.status() >= 400) failures.push(`${response.url()}: ${response.status()}`); });
  }
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
  return page;
}
