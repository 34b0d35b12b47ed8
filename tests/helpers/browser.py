"""Debian's Chromium for the browser tests and benchmarks (never a downloaded build)."""

from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (make test installs it)")

# Elements anywhere in the page (shadow roots included: Bokeh renders into them) that could run script.
HOSTILE_ELEMENTS = """() => {
  const bad = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      for (const a of el.getAttributeNames())
        if (a.startsWith("on")) bad.push(`<${el.tagName} ${a}>`);
      const href = (el.getAttribute("href") || "").trim().toLowerCase();
      if (href.startsWith("javascript:")) bad.push(`<${el.tagName} href=javascript:>`);
      if (el.tagName === "IMG" && el.getAttribute("src") === "x") bad.push("<IMG src=x>");
      if (el.tagName === "SCRIPT" && !["application/json", "application/vnd.bokehjs_exec.v0+json"].includes(el.type)
          && (el.textContent || "").includes("alert(")) bad.push("<SCRIPT>alert");  // (JSON data runs nothing)
      if (el.shadowRoot) walk(el.shadowRoot);
    }
  };
  walk(document);
  return bad;
}"""

# All text of the page, shadow roots included.
PAGE_TEXT = """() => {
  const parts = [];
  const walk = (root) => {
    for (const el of root.querySelectorAll("*")) {
      if (el.shadowRoot) { parts.push(el.shadowRoot.textContent || ""); walk(el.shadowRoot); }
    }
  };
  parts.push(document.body.innerText);
  walk(document);
  return parts.join(" ");
}"""
