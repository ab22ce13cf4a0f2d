// SVG plots drawn from the API's numbers: the enrichment forest plot (who is weak) and the
// gap-closing plot (attended minus dense, and minus the random control, per subgroup).
import { fixed, s } from "./dom.js";

const ROW = 22;
const PLOT = 480;
const CHAR = 7; // px per character of a 12px label, roughly: room for the longest one
const PAD = 16;

function axis(scale, ticks, top, bottom, format) {
  return ticks.map((t) => s("g", { class: "tick" },
    s("line", { x1: scale(t), x2: scale(t), y1: top, y2: bottom }),
    s("text", { x: scale(t), y: bottom + 14, "text-anchor": "middle" }, format(t))));
}

/** Forest plot of enrichment (HTL rate in a group / overall rate) on a log scale with 95% intervals;
 *  groups significant after Benjamini-Hochberg are filled and starred. onPick(group) on a click. */
export function enrichmentPlot(groups, onPick) {
  const rows = groups.filter((g) => g.enrichment !== null && g.enrichment_ci95);
  const name = (g) => `${g.significant ? "* " : ""}${g.attribute} = ${g.value} (${g.htl}/${g.n})`;
  const LABEL = Math.max(120, CHAR * Math.max(0, ...rows.map((g) => name(g).length)));
  const lo = 1 / 16, hi = 16;
  const clamp = (x) => Math.min(hi, Math.max(lo, x || lo));
  const scale = (x) => LABEL + PAD + ((Math.log2(clamp(x)) - Math.log2(lo)) / (Math.log2(hi) - Math.log2(lo))) * PLOT;
  const top = 24, bottom = top + rows.length * ROW;
  const width = LABEL + PLOT + 2 * PAD + 70;
  return s("svg", { class: "plot", viewBox: `0 0 ${width} ${bottom + 36}`, width, role: "img",
    "aria-label": "enrichment of each subgroup among hard-to-learn images, with 95% intervals", "data-testid": "enrichment-plot" },
    s("text", { x: scale(1), y: 14, "text-anchor": "middle", class: "axis-title" }, "× as common among HTL images (log scale)"),
    axis(scale, [0.125, 0.25, 0.5, 1, 2, 4, 8], top - 4, bottom, (t) => (t < 1 ? `1/${1 / t}` : `${t}`)),
    s("line", { class: "reference", x1: scale(1), x2: scale(1), y1: top - 4, y2: bottom }),
    rows.map((g, i) => {
      const y = top + i * ROW + ROW / 2;
      const mark = g.significant ? (g.enrichment > 1 ? "over" : "under") : "plain";
      return s("g", { class: `row ${mark}`, "data-attribute": g.attribute, "data-value": g.value, tabindex: "0",
        onclick: () => onPick && onPick(g), onkeydown: (e) => e.key === "Enter" && onPick && onPick(g) },
        s("title", {}, `${g.attribute}=${g.value}: ${fixed(g.enrichment, 2)}× (95% ${fixed(g.enrichment_ci95[0], 2)}–${fixed(g.enrichment_ci95[1], 2)}); ` +
          `${g.htl} of ${g.n} HTL; adjusted p ${g.p_adjusted.toPrecision(2)}`),
        s("text", { x: LABEL, y: y + 4, "text-anchor": "end", class: "label" }, name(g)),
        s("line", { class: "interval", x1: scale(g.enrichment_ci95[0]), x2: scale(g.enrichment_ci95[1]), y1: y, y2: y }),
        s("circle", { class: "estimate", cx: scale(g.enrichment), cy: y, r: 4 }),
        s("text", { x: LABEL + PLOT + 2 * PAD, y: y + 4, class: "value" }, `${fixed(g.enrichment, 2)}×`));
    }));
}

const SERIES = [
  { key: null, name: "attended − dense", cls: "attended" },
  { key: "attended_vs_control", name: "attended − control", cls: "control" },
];

/** Per subgroup, the paired Dice difference attended − dense (and attended − control when the job
 *  trained a random control), with bootstrap 95% intervals; significant ones are starred. */
export function gapPlot(gap) {
  const rows = [{ attribute: "overall", value: "", ...gap.overall }, ...gap.subgroups];
  const label = (row) => `${row.attribute === "overall" ? "overall" : `${row.attribute} = ${row.value}`} (n=${row.n})`;
  const LABEL = Math.max(120, CHAR * Math.max(...rows.map((row) => label(row).length)));
  const series = SERIES.filter((x) => x.key === null || rows[0][x.key]);
  const pick = (row, x) => (x.key === null ? row : row[x.key]);
  const bound = Math.max(0.02, ...rows.flatMap((r) => series.map((x) => pick(r, x)).filter(Boolean)
    .flatMap((d) => [d.difference, ...d.difference_ci95].filter((x) => x !== null).map(Math.abs))));
  const scale = (x) => LABEL + PAD + ((Math.max(-bound, Math.min(bound, x)) + bound) / (2 * bound)) * PLOT;
  const band = ROW * series.length;
  const top = 40, bottom = top + rows.length * band;
  const width = LABEL + PLOT + 2 * PAD + 90;
  const ticks = [-bound, -bound / 2, 0, bound / 2, bound];
  return s("svg", { class: "plot", viewBox: `0 0 ${width} ${bottom + 36}`, width, role: "img",
    "aria-label": "Dice difference per subgroup with 95% intervals", "data-testid": "gap-plot" },
    s("text", { x: scale(0), y: 12, "text-anchor": "middle", class: "axis-title" }, "Dice difference (paired, per image)"),
    series.map((x, i) => s("g", { class: `legend ${x.cls}` },
      s("circle", { cx: LABEL + PAD + i * 160, cy: 26, r: 4, class: "estimate" }),
      s("text", { x: LABEL + PAD + 8 + i * 160, y: 30 }, x.name))),
    axis(scale, ticks, top - 4, bottom, (t) => (t === 0 ? "0" : t.toFixed(3))),
    s("line", { class: "reference", x1: scale(0), x2: scale(0), y1: top - 4, y2: bottom }),
    rows.map((row, i) => {
      const y0 = top + i * band;
      const name = row.attribute === "overall" ? "overall" : `${row.attribute} = ${row.value}`;
      return s("g", { class: "row", "data-attribute": row.attribute, "data-value": row.value },
        s("text", { x: LABEL, y: y0 + band / 2 + 4, "text-anchor": "end", class: "label" }, label(row)),
        series.map((x, k) => {
          const d = pick(row, x);
          if (!d) return null;
          const y = y0 + k * ROW + ROW / 2;
          return s("g", { class: `${x.cls} ${d.significant ? "significant" : ""}` },
            s("title", {}, `${name}, ${x.name}: ${fixed(d.difference, 4)} (95% ${fixed(d.difference_ci95[0], 4)} to ${fixed(d.difference_ci95[1], 4)})` +
              (d.p_adjusted !== undefined ? `, adjusted p ${d.p_adjusted.toPrecision(2)}` : "")),
            d.difference_ci95[0] === null ? null // one image under one seed: no interval to draw
              : s("line", { class: "interval", x1: scale(d.difference_ci95[0]), x2: scale(d.difference_ci95[1]), y1: y, y2: y }),
            s("circle", { class: "estimate", cx: scale(d.difference), cy: y, r: 4 }),
            s("text", { x: LABEL + PLOT + 2 * PAD, y: y + 4, class: "value" }, `${d.significant ? "* " : ""}${fixed(d.difference, 3)}`));
        }));
    }));
}
