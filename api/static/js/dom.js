// Small DOM helpers. Text goes in as text nodes, never as HTML: file names,
// series descriptions and error messages come from uploads.

/**
 * el("p", {class: "x", "aria-label": "y", onclick: fn}, "text", child, ...)
 * Attributes whose value is null, undefined or false are left out; true sets "".
 */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2), value);
    } else if (name === "style") {
      node.style.cssText = String(value); // CSSOM: allowed by the strict CSP, a style attribute is not
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(node, children);
  return node;
}

// Controls, format characters (the right-to-left override U+202E, zero-width
// spaces), separators other than the plain space: what Python's str.isprintable()
// refuses, the rule of the service (ingest/visible.py) and of the lungct CLI.
const NOT_PRINTABLE = /[\p{C}\p{Zl}\p{Zp}]|(?! )\p{Zs}/gu;

/** Text as the page shows it: a name from an upload cannot fake its extension. */
export function shown(text) {
  return String(text).replace(NOT_PRINTABLE, "\uFFFD");
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(shown(child)));
  }
}

/** Replace node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const percent = (x, digits = 1) => `${(100 * x).toFixed(digits)}%`;

/** An ISO time in the reader's locale, or "" for null. */
export function localTime(iso) {
  if (!iso) return "";
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : t.toLocaleString();
}

/** A labelled progress bar: {element, set(value, max, text)}; value null = indeterminate. */
export function progressBar(label) {
  const inner = el("div", { class: "bar-fill" });
  const element = el(
    "div",
    { class: "bar", role: "progressbar", "aria-label": label, "aria-valuemin": 0, "aria-valuemax": 100 },
    inner,
  );
  return {
    element,
    set(value, max, text) {
      if (value === null || !max) {
        element.removeAttribute("aria-valuenow");
        inner.style.width = "0";
      } else {
        const now = Math.round((100 * value) / max);
        element.setAttribute("aria-valuenow", String(now));
        inner.style.width = `${now}%`;
      }
      if (text) element.setAttribute("aria-valuetext", text);
      else element.removeAttribute("aria-valuetext");
    },
  };
}

/** One small bar per class, each labelled with the class and its probability. */
export function probabilityBars(probabilities, classes) {
  if (!probabilities) return el("span", { class: "hint" }, "none");
  const names = classes && classes.length ? classes : Object.keys(probabilities);
  return el(
    "div",
    { class: "probs" },
    names.map((name) => {
      const p = probabilities[name] ?? 0;
      return el(
        "div",
        { class: "prob", title: `${name} ${percent(p)}` },
        el("span", { class: "prob-name" }, name),
        el(
          "span",
          { class: "prob-bar", role: "img", "aria-label": `${name} ${percent(p)}` },
          el("span", { class: `prob-fill cls-${cssName(name)}`, style: `width:${(100 * p).toFixed(1)}%` }),
        ),
        el("span", { class: "prob-value" }, percent(p)),
      );
    }),
  );
}

export const cssName = (s) => String(s).toLowerCase().replace(/[^a-z0-9_-]/g, "-");
