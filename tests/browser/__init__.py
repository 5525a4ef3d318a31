"""Dashboard tests in a real browser (Chromium via Playwright)."""
