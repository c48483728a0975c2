// Opens the /ui page in Debian's chromium (headless, through playwright-core)
// and prints what it shows as JSON, for tests/tests/e2e/ui.rs to check.
//   node tests/ui/check.mjs URL ADMIN_TOKEN ENDPOINT SCREENSHOT.png
import { chromium } from "playwright-core";

const [url, token, endpoint, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  // As root in a sandbox with no network beyond loopback: no Chromium
  // sandbox, and none of its background connections.
  args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const out = {};
try {
  // Without a token: the form asks for one.
  const anon = await browser.newPage();
  await anon.goto(`${url}/ui`);
  await anon.waitForSelector("#login:not([hidden])", { timeout: 10000 });
  out.asks_for_token = true;
  // A wrong token is refused and the form says so.
  await anon.fill("#token", "not-the-token");
  await anon.click("#login button");
  await anon.waitForFunction(() => document.getElementById("login-why").textContent.includes("refused"), null, { timeout: 10000 });
  out.wrong_token_refused = true;
  await anon.close();

  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const consoleErrors = [];
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(m.text()));
  page.on("pageerror", (e) => consoleErrors.push(String(e)));
  await page.goto(`${url}/ui#token=${encodeURIComponent(token)}`);
  // Plots with at least two intervals of traffic for every version.
  await page.waitForFunction(
    (ep) => {
      const p = window.wasmscoreUi?.plots?.[`${ep}/rps`];
      return p && p.points >= 2 && p.values >= 4 && document.querySelector(`section[data-endpoint="${ep}"] .verdict .line`);
    },
    endpoint,
    { timeout: 60000, polling: 500 },
  );
  Object.assign(
    out,
    await page.evaluate((ep) => {
      const sec = document.querySelector(`section[data-endpoint="${ep}"]`);
      // Pixels the plot drew on its canvas (not the blank background).
      const inked = (key) => {
        const c = sec.querySelector(`.plot[data-plot="${key}"] canvas`);
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        let n = 0;
        for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++;
        return n;
      };
      const plots = {};
      for (const key of ["rps", "latency", "errors_per_second", "replicas"]) {
        const p = window.wasmscoreUi.plots[`${ep}/${key}`];
        plots[key] = { points: p.points, values: p.values, series: p.u.series.slice(1).map((s) => s.label), inked: inked(key) };
      }
      return {
        url_after: location.href,
        token_kept: localStorage.getItem("wasmscore_admin") !== null && !document.cookie.includes("wasmscore_admin"),
        heading: sec.querySelector("h2").textContent,
        rows: [...sec.querySelectorAll("tbody tr")].map((tr) => [...tr.children].map((td) => td.textContent)),
        verdict: [...sec.querySelectorAll(".verdict p")].map((p) => p.textContent),
        plots,
        refreshes: window.wasmscoreUi.refreshes,
      };
    }, endpoint),
  );
  out.console_errors = consoleErrors;
  await page.screenshot({ path: screenshot, fullPage: true });
  out.screenshot = screenshot;
} finally {
  await browser.close();
}
console.log(JSON.stringify(out));
