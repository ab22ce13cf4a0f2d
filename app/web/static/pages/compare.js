// Jobs side by side: a sweep's variants (/sweeps/{id}), every job of a dataset (/datasets/{id}/compare),
// and the list of sweeps (/sweeps). One row per job: the spec fields in which the jobs differ, then
// attended − dense and attended − control (overall and on the focus set, with 95% intervals), the
// worst-decile Dice, and what the job re-used.
import { request } from "../api.js";
import { errorBox, FINISHED, h, percent, signed, statusBadge, table, when, fixed } from "../dom.js";

const POLL_MS = 3000;

const withInterval = (value, interval) =>
  value === null || value === undefined
    ? "–"
    : !interval || interval.includes(null)
      ? signed(value, 4)
      : `${signed(value, 4)} [${signed(interval[0], 4)}, ${signed(interval[1], 4)}]`;

function differenceCells(d) {
  return d ? [withInterval(d.overall, d.overall_ci95), withInterval(d.focus, d.focus_ci95)] : ["–", "–"];
}

/** The comparison table; variants (a sweep's) add the rows of those not submitted yet. */
export function comparisonTable(comparison, variants = null) {
  const rows = Object.fromEntries(comparison.rows.map((r) => [r.job_id, r]));
  const entries = variants
    ? variants.map((v) => ({ variant: v, row: rows[v.job_id] || null }))
    : comparison.rows.map((row) => ({ variant: null, row }));
  const headers = ["Job", "Status", ...comparison.fields, "attended − dense", "focus", "attended − control", "focus",
    "worst decile: attended / dense", "re-used from"];
  const cells = entries.map(({ variant, row }) => {
    const values = row ? row.values : Object.fromEntries(comparison.fields.map((f) => [f, variant.overrides[f]]));
    const headline = (row && row.headline) || {};
    const worst = headline.worst_decile || {};
    const status = row
      ? h("span", {}, statusBadge(row.status), row.status === "running" ? ` ${percent(row.progress)}` : "")
      : h("span", { title: variant.error || (variant.waits_for ? `waits for job ${variant.waits_for}` : "") },
        statusBadge(variant.state === "pending" ? "waiting" : variant.state));
    return [
      row ? h("a", { href: `/jobs/${row.job_id}` }, row.job_id.slice(0, 8)) : "–",
      status,
      ...comparison.fields.map((f) => JSON.stringify(values[f] ?? null)),
      ...differenceCells(headline.attended_vs_dense),
      ...differenceCells(headline.attended_vs_control),
      worst.attended === undefined ? "–" : `${fixed(worst.attended)} / ${fixed(worst.dense)}`,
      row && row.reused_from ? h("a", { href: `/jobs/${row.reused_from}` }, row.reused_from.slice(0, 8)) : "–",
    ];
  });
  return table(headers, cells, { testid: "comparison", class: "comparison" });
}

function verdicts(comparison, variants) {
  const rows = Object.fromEntries(comparison.rows.map((r) => [r.job_id, r]));
  const order = variants ? variants.map((v) => rows[v.job_id]).filter(Boolean) : comparison.rows;
  const lines = order.filter((r) => r.headline && r.headline.verdict)
    .map((r) => h("li", {}, h("a", { href: `/jobs/${r.job_id}` }, r.job_id.slice(0, 8)), `: ${r.headline.verdict}`));
  const skipped = (variants || []).filter((v) => v.error).map((v) => h("li", {}, `variant ${v.position}: ${v.error}`));
  return lines.length || skipped.length ? h("ul", { class: "verdicts", testid: "verdicts" }, lines, skipped) : null;
}

// the variant chosen on validation (and why), then how it did on test
function selectionBox(selection) {
  if (!selection) return null;
  return h("section", { class: "selection", testid: "selection" }, h("h2", {}, "Selected on validation"),
    selection.job_id ? h("p", {}, "Chosen: ", h("a", { href: `/jobs/${selection.job_id}` }, selection.job_id.slice(0, 8)),
      ` ${JSON.stringify(selection.overrides)}`) : null,
    h("p", { class: "verdict" }, selection.sentence));
}

const finished = (comparison, variants) =>
  comparison.rows.every((r) => FINISHED.includes(r.status)) && !(variants || []).some((v) => v.state === "pending");

async function sweepPage(main, sweepId) {
  const problem = h("div");
  const body = h("section", { "aria-label": "comparison" });
  main.replaceChildren(h("h1", {}, "Sweep"), problem, body);
  const poll = async () => {
    let done = false;
    try {
      const sweep = await request(`/v1/sweeps/${sweepId}`);
      const vary = sweep.vary.map((v) => `${v.field} ∈ {${v.values.map((x) => JSON.stringify(x)).join(", ")}}`).join(", ");
      body.replaceChildren(
        h("p", {}, h("strong", {}, sweep.name || sweep.id.slice(0, 8)), ` · ${sweep.variants.length} variants over ${vary} · `,
          h("a", { href: `/datasets/${sweep.dataset_id}/compare` }, "every job of this dataset"), ` · created ${when(sweep.created_at)}`),
        h("p", { class: "legend" }, "Dice differences on each job's test split (validation when it has none), averaged over seeds, ",
          "with 95% intervals; focus: the images where attention should matter. Variants that share their dense settings ",
          "share one set of dense, label-check and score units: the first computes them, the others re-use them."),
        selectionBox(sweep.selection),
        comparisonTable(sweep.comparison, sweep.variants),
        verdicts(sweep.comparison, sweep.variants));
      done = finished(sweep.comparison, sweep.variants);
    } catch (error) {
      if (error.status === 404) {
        body.replaceChildren(h("p", { testid: "not-found" }, "There is no sweep with this id (or it is another user's)."));
        return;
      }
      problem.replaceChildren(errorBox(error));
    }
    if (!done) setTimeout(poll, POLL_MS);
  };
  await poll();
}

async function datasetPage(main, datasetId) {
  const problem = h("div");
  main.replaceChildren(h("h1", {}, "Compare jobs"), problem);
  try {
    const [dataset, comparison] = await Promise.all([request(`/v1/datasets/${datasetId}`), request(`/v1/datasets/${datasetId}/comparison`)]);
    main.append(h("p", {}, `Every job of yours on ${dataset.name} (newest first).`),
      comparison.rows.length ? comparisonTable(comparison) : h("p", {}, "No jobs on this dataset yet."),
      verdicts(comparison, null));
  } catch (error) {
    problem.replaceChildren(errorBox(error));
  }
}

async function listPage(main) {
  const sweeps = (await request("/v1/sweeps?limit=100")).items;
  main.replaceChildren(h("h1", {}, "Sweeps"),
    h("p", {}, "Create one with ", h("code", {}, "htl sweep DATASET --spec base.json --vary attention.factor=2,3,6"),
      " or POST /v1/sweeps."),
    sweeps.length
      ? table(["Sweep", "Variants", "Varied", "Created"], sweeps.map((s) => [
        h("a", { href: `/sweeps/${s.id}` }, s.name || s.id.slice(0, 8)),
        String(s.variants.length),
        s.vary.map((v) => v.field).join(", "),
        when(s.created_at),
      ]), { testid: "sweep-list" })
      : h("p", {}, "No sweeps yet."));
}

export async function render(main) {
  const path = location.pathname.replace(/\/$/, "");
  const sweep = path.match(/^\/sweeps\/([0-9a-f-]{36})$/);
  const dataset = path.match(/^\/datasets\/([0-9a-f-]{36})\/compare$/);
  if (sweep) return sweepPage(main, sweep[1]);
  if (dataset) return datasetPage(main, dataset[1]);
  return listPage(main);
}
