// Live refresh: run a page's refresh now, then every intervalMs after the previous one ends
// (never two at once), paused while the tab is hidden and resumed at once when it shows again.

/** How often the pages refresh: the lists and a deployment 5 s, nodes (heartbeats) 10 s. */
export const REFRESH_MS = { deployments: 5_000, deployment: 5_000, nodes: 10_000 };

export function startPolling(refresh, intervalMs) {
  let timer = null;
  let running = false;
  let again = false; // a refresh was asked for while one was running
  let stopped = false;

  async function tick() {
    clearTimeout(timer);
    timer = null;
    if (stopped || document.hidden) return;
    if (running) {
      again = true;
      return;
    }
    running = true;
    try {
      await refresh();
    } catch (error) {
      // Pages show their own errors; this only keeps the loop alive if one slips through.
      console.error(error);
    } finally {
      running = false;
    }
    if (stopped) return;
    if (again) {
      again = false;
      tick();
    } else if (!document.hidden) {
      timer = setTimeout(tick, intervalMs);
    }
  }

  function onVisibilityChange() {
    if (!document.hidden && !running && timer === null) tick();
  }

  document.addEventListener("visibilitychange", onVisibilityChange);
  tick();

  return {
    /** Refresh now (a filter changed, a stop was sent) instead of waiting for the timer. */
    now: tick,
    stop() {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibilityChange);
    },
  };
}
