// One job: live status; once it has succeeded, the HTL gallery (hardest first, filterable by
// subgroup, with a detail view), who is weak, gap closing, scorer agreement, metrics and checkpoints.
import { ApiError, getAll, getBlob, request } from "../api.js";
import { bytes, duration, errorBox, eta, FINISHED, fixed, h, percent, signed, statusBadge, table, when } from "../dom.js";
import { enrichmentPlot, gapPlot } from "../plots.js";

const POLL_MS = 2000;
const PAGE = 48;
const THUMB = 192;

const jobId = decodeURIComponent(location.pathname.split("/")[2] || "");

function notFound(main) {
  main.replaceChildren(h("h1", {}, "Job not found"),
    h("p", { testid: "not-found" }, `There is no job ${jobId} under this API key.`), h("a", { href: "/jobs" }, "All jobs"));
}

function header(job, dataset, onCancel) {
  const left = eta(job);
  return h("section", { class: "card", "aria-label": "status" },
    h("p", {}, "Dataset: ", dataset ? dataset.name : job.dataset_id, " · submitted ", when(job.created_at),
      job.worker ? ` · worker ${job.worker}` : "", job.attempt > 1 ? ` · attempt ${job.attempt}` : ""),
    h("p", { class: "status-line" }, statusBadge(job.status, { testid: "job-status" }),
      job.stage ? ` stage ${job.stage}` : "", " ",
      h("progress", { max: "1", value: String(job.progress) }), ` ${percent(job.progress)}`,
      left === null ? "" : ` · about ${duration(left)} left`,
      job.finished_at && job.started_at ? ` · took ${duration((new Date(job.finished_at) - new Date(job.started_at)) / 1000)}` : "",
      FINISHED.includes(job.status) ? "" : h("button", { type: "button", class: "secondary", onclick: onCancel }, "Cancel")),
    job.units && job.units.length ? h("details", { open: job.status === "running" ? true : null },
      h("summary", {}, `Units (${job.units.filter((u) => u.status === "succeeded").length} of ${job.units.length} done)`),
      table(["Unit", "Status", "Worker", "Attempt", "Progress", "Took"], job.units.map((u) => [u.name, statusBadge(u.status), u.worker || "–",
        u.attempt || "–", percent(u.progress),
        u.started_at && u.finished_at ? duration((new Date(u.finished_at) - new Date(u.started_at)) / 1000) : "–"]), { testid: "job-units" })) : null,
    job.error ? h("p", { class: "error" }, job.error) : null,
    job.warnings.length ? h("ul", { class: "warnings" }, job.warnings.map((w) => h("li", {}, w))) : null,
    h("details", {}, h("summary", {}, "Spec as run"), h("pre", {}, JSON.stringify(job.spec, null, 2))));
}

async function imageInto(img, path) {
  const url = URL.createObjectURL(await getBlob(path));
  img.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  img.src = url;
}

const overlayPath = (image, layers, size) =>
  `/v1/jobs/${jobId}/images/${encodeURIComponent(image)}/overlay.png?layers=${encodeURIComponent(layers.join(","))}&size=${size}`;

function legend(layers, colours) {
  return h("p", { class: "legend" }, layers.map((layer) => h("span", { class: "key" },
    swatch(colours[layer]), layer === "gt" ? "ground truth" : layer === "dense" ? "dense model" : `${layer} model`)));
}

function swatch(colour) {
  const box = h("span", { class: "swatch" });
  box.style.backgroundColor = colour; // CSSOM, allowed by the page's style-src 'self'
  return box;
}

function detailDialog() {
  const dialog = h("dialog", { class: "detail", testid: "image-detail" });
  document.body.append(dialog);
  dialog.addEventListener("close", () => history.replaceState(null, "", location.pathname + location.search));
  return async function open(imageId) {
    history.replaceState(null, "", `#image=${encodeURIComponent(imageId)}`);
    dialog.replaceChildren(h("p", {}, "Loading…"));
    if (!dialog.open) dialog.showModal();
    const image = await request(`/v1/jobs/${jobId}/images/${encodeURIComponent(imageId)}`);
    const picture = h("img", { alt: `${image.image_id} with the chosen layers`, class: "full" });
    const chosen = new Set(image.layers);
    const redraw = () => imageInto(picture, overlayPath(image.image_id, image.layers.filter((l) => chosen.has(l)), 512));
    const toggles = image.layers.map((layer) => h("label", { class: "inline" },
      h("input", { type: "checkbox", checked: true, name: layer, onchange: (e) => { e.target.checked ? chosen.add(layer) : chosen.delete(layer); redraw(); } }),
      swatch(image.layer_colours[layer]), ` ${layer}`));
    dialog.replaceChildren(
      h("form", { method: "dialog", class: "close" }, h("button", { type: "submit", "aria-label": "close" }, "Close")),
      h("h2", {}, `#${image.rank} ${image.image_id}`, image.is_htl ? h("span", { class: "badge htl" }, "HTL") : null),
      h("div", { class: "detail-body" },
        h("figure", {}, picture, h("figcaption", {}, "Layers: ", toggles)),
        h("div", {},
          table(["Score", "Value"], [["htl_score (mean over sparsities)", fixed(image.htl_score)],
            ...Object.entries(image.per_sparsity).map(([sp, v]) => [`disagreement at sparsity ${sp}`, fixed(v)]),
            ...Object.entries(image.scores).map(([name, v]) => [name, fixed(v)]),
            ["label quality (out-of-sample check of the mask)", image.label_quality === null ? "not checked" : fixed(image.label_quality)],
            ["label issue (the mask is probably wrong)", image.label_issue === null ? "–" : (image.label_issue ? "yes" : "no")],
            ["attended (boosted by attention)", image.attended ? "yes" : "no"]]),
          table(["Attribute", "Value", "Subgroup"], Object.keys({ ...image.attributes, ...image.subgroups }).map((a) =>
            [a, image.attributes[a] ?? "–", image.subgroups[a] ?? "–"])),
          image.labeled ? null : h("p", { class: "hint" }, "This image had no target (mask or label) to train on."))));
    await redraw();
  };
}

function gallery(items, layers, colours, openDetail) {
  const grid = h("div", { class: "gallery", testid: "htl-gallery" });
  const more = h("button", { type: "button", class: "secondary" }, "Show more");
  const count = h("p", { class: "hint", role: "status" });
  const filter = h("select", { id: "gallery-filter", "aria-label": "filter by subgroup" });
  const values = new Map();
  for (const item of items) {
    for (const [attribute, value] of Object.entries(item.subgroups)) {
      const key = `${attribute}=${value}`;
      values.set(key, (values.get(key) || 0) + 1);
    }
  }
  filter.append(h("option", { value: "" }, `all HTL images (${items.length})`),
    ...[...values.keys()].sort().map((key) => h("option", { value: key }, `${key.replace("=", " = ")} (${values.get(key)})`)));
  let shown = [], next = 0;

  function card(item) {
    const img = h("img", { alt: `${item.image_id}: ${layers.join(", ")}`, width: THUMB, height: THUMB, loading: "lazy" });
    imageInto(img, overlayPath(item.image_id, layers, THUMB)).catch(() => img.classList.add("broken"));
    const scores = Object.entries(item.per_sparsity).map(([sp, v]) => `${sp}: ${fixed(v, 2)}`).join(" · ");
    return h("button", { type: "button", class: "item", testid: "htl-item", dataset: { image: item.image_id },
      onclick: () => openDetail(item.image_id) },
      img, h("span", { class: "rank" }, `#${item.rank} ${item.image_id}`),
      h("span", { class: "score" }, `htl ${fixed(item.htl_score)}`), h("span", { class: "per-sparsity" }, scores));
  }

  function showMore() {
    grid.append(...shown.slice(next, next + PAGE).map(card));
    next = Math.min(shown.length, next + PAGE);
    more.hidden = next >= shown.length;
    count.textContent = `${shown.length} image${shown.length === 1 ? "" : "s"}, hardest first; showing ${next}.`;
  }

  function apply() {
    const [attribute, value] = filter.value ? [filter.value.slice(0, filter.value.indexOf("=")), filter.value.slice(filter.value.indexOf("=") + 1)] : [];
    shown = attribute ? items.filter((item) => item.subgroups[attribute] === value) : items;
    next = 0;
    grid.replaceChildren();
    showMore();
  }

  filter.addEventListener("change", apply);
  more.addEventListener("click", showMore);
  apply();
  const select = (group) => {
    const key = `${group.attribute}=${group.value}`;
    if (!values.has(key)) return false;
    filter.value = key;
    apply();
    return true;
  };
  return { element: h("div", {}, h("label", { for: "gallery-filter" }, "Subgroup "), filter, legend(layers, colours), count, grid, more), select };
}

function metricsTable(metrics) {
  const names = Object.keys(metrics.models).filter((name) => !/-s\d+$/.test(name));
  const columns = ["dice", "jaccard", "threshold_jaccard", "box_iou", "sensitivity", "specificity", "hd95", "nsd"];
  const available = columns.filter((c) => names.some((n) => metrics.models[n].overall[c] !== undefined));
  const degenerate = new Set(metrics.degenerate_sparsities.map(String));
  const rows = names.map((name) => {
    const sparsity = name.startsWith("pruned@") ? name.slice(7) : null;
    return [h("span", {}, name, sparsity && degenerate.has(String(Number(sparsity))) ? h("span", { class: "badge failed" }, "degenerate") : null),
      metrics.models[name].n, ...available.map((c) => fixed(metrics.models[name].overall[c], 4))];
  });
  const delta = (label, d) => d && [label, "", ...available.map((c) =>
    `${signed(d.overall[c], 4)} [${fixed(d.overall_ci95[c] && d.overall_ci95[c][0], 3)}, ${fixed(d.overall_ci95[c] && d.overall_ci95[c][1], 3)}]`)];
  return table(["Model", "Images", ...available], [...rows,
    delta("attended − dense (95% over seeds)", metrics.attended_vs_dense),
    delta("attended − control", metrics.attended_vs_control)].filter(Boolean), { testid: "metrics-table" });
}

async function download(checkpoint, status) {
  status.textContent = `Downloading ${checkpoint.name}…`;
  const blob = await getBlob(`/v1/jobs/${jobId}/checkpoints/${encodeURIComponent(checkpoint.name)}`);
  let check = "";
  if (crypto.subtle) {
    const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
    const hex = [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
    check = hex === checkpoint.sha256 ? " (sha256 matches the server's)" : " (sha256 DOES NOT match the server's: do not use it)";
  }
  saveBlob(blob, `${checkpoint.name}.${checkpoint.format}`);
  status.textContent = `Saved ${checkpoint.name}.${checkpoint.format}${check}.`;
}

function labelCheckSection(check, issues, openDetail) {
  const box = h("section", { id: "label-check" }, h("h2", {}, "Label check: hard image or wrong mask?"));
  if (!check || !check.enabled) {
    box.append(h("p", {}, `No label check ran${check && check.reason ? ` (${check.reason})` : ""}.`));
    return box;
  }
  const counts = Object.entries(check.n_issues).map(([split, n]) => `${n} of ${check.checked[split]} ${split}`).join(", ");
  box.append(h("p", { testid: "label-check-summary" }, `Masks flagged as probably wrong: ${counts}. `,
    `Each mask was compared with the prediction of a model that never saw it (${check.folds}-fold cross-fitting; held-out images: the dense models). `,
    `Rule: ${check.rule}. Attention leaves flagged images out; each model's figures without them are its subgroup label_check = ok.`));
  const train = issues.filter((i) => i.links.overlay);
  const grid = h("div", { class: "gallery", testid: "label-issues" }, ...train.slice(0, PAGE).map((item) => {
    const img = h("img", { alt: `${item.image_id}: its mask (gt) and the out-of-sample prediction (oos)`, width: THUMB, height: THUMB, loading: "lazy" });
    imageInto(img, overlayPath(item.image_id, ["gt", "oos"], THUMB)).catch(() => img.classList.add("broken"));
    return h("button", { type: "button", class: "item", dataset: { image: item.image_id }, onclick: () => openDetail(item.image_id) },
      img, h("span", { class: "rank" }, `#${item.rank} ${item.image_id}`), h("span", { class: "score" }, `quality ${fixed(item.label_quality, 2)}`),
      h("span", { class: "per-sparsity" }, item.attended ? "attended" : (item.is_htl ? "HTL, not attended" : "not HTL")));
  }));
  box.append(train.length ? grid : h("p", {}, "No training mask was flagged."),
    h("p", { class: "hint" }, "Green: the mask as uploaded; magenta: the out-of-sample prediction. ",
      h("a", { href: `/v1/jobs/${jobId}/label-issues` }, "All flagged images (JSON)")));
  return box;
}

function saveBlob(blob, name) {
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

const QUEUE_ROWS = 25;

/** A semi-supervised job's unlabeled images, most worth annotating first by the chosen strategy. */
function annotationQueueSection(job, openDetail) {
  const strategies = ["random", "htl", ...((job.spec.scorers || []).includes("mc_dropout") ? ["mc_dropout"] : [])];
  const select = h("select", { id: "queue-strategy", testid: "queue-strategy" },
    strategies.map((s) => h("option", { value: s }, s)));
  const body = h("div", { testid: "annotation-queue" });
  const status = h("p", { role: "status", class: "hint" });
  const path = `/v1/jobs/${jobId}/annotation-queue`;
  async function show() {
    const page = await request(`${path}?${new URLSearchParams({ strategy: select.value, limit: String(QUEUE_ROWS) })}`);
    body.replaceChildren(page.items.length
      ? table(["Annotate", "Image", select.value === "random" ? "Draw" : "Score", "HTL rank"], page.items.map((item) => [
          item.position,
          h("button", { type: "button", class: "link", onclick: () => openDetail(item.image_id) }, item.image_id),
          fixed(item.value, 3), item.rank]))
      : h("p", {}, "Every training image has a mask: nothing to annotate."));
  }
  async function exportCsv() {
    status.textContent = "Exporting…";
    saveBlob(await getBlob(`${path}?strategy=${encodeURIComponent(select.value)}`, "text/csv"), `annotation-queue-${select.value}.csv`);
    status.textContent = `Saved annotation-queue-${select.value}.csv (every unlabeled image, in ${select.value} order).`;
  }
  select.addEventListener("change", () => show().catch((e) => { status.textContent = e.message; }));
  show().catch((e) => { status.textContent = e.message; });
  return h("section", { id: "annotation-queue" }, h("h2", {}, "Annotation queue: which images to label next"),
    h("p", { class: "hint" }, "The training images without a mask, in the order a strategy would have them annotated: random ",
      "(a seeded shuffle), htl (the HTL ranking), mc_dropout (the dense model's disagreement with itself under dropout, when the job computed it). "),
    h("p", { class: "warning", testid: "queue-finding" }, "Measured on HAM10000 (BENCHMARKS.md): labelling the next 10% by htl gave ",
      "0.022 lower test Dice than labelling random images, and mc_dropout 0.011 lower (3 seeds). Random is the default, and the one to beat."),
    h("label", {}, "Strategy ", select), " ",
    h("button", { type: "button", class: "secondary", testid: "queue-export", onclick: () => exportCsv().catch((e) => { status.textContent = e.message; }) },
      "Export CSV"), body, status);
}

async function results(main, job) {
  const [htl, subgroups, metrics, checkpoints] = await Promise.all([
    getAll(`/v1/jobs/${jobId}/scores`, { htl_only: "true" }),
    request(`/v1/jobs/${jobId}/subgroups`),
    request(`/v1/jobs/${jobId}/metrics`),
    getAll(`/v1/jobs/${jobId}/checkpoints`),
  ]);
  const first = htl.length ? await request(`/v1/jobs/${jobId}/images/${encodeURIComponent(htl[0].image_id)}`) : null;
  const issues = metrics.label_check && metrics.label_check.enabled ? await getAll(`/v1/jobs/${jobId}/label-issues`) : [];
  const openDetail = detailDialog();
  const thumbLayers = first ? first.layers.filter((l) => l !== "oos") : ["gt"];
  const view = gallery(htl, thumbLayers, first ? first.layer_colours : {}, (id) => openDetail(id).catch((e) => alert(e.message)));
  const galleryBox = h("section", { id: "gallery" }, h("h2", {}, "Hard-to-learn images"),
    h("p", { class: "hint" }, `The ${htl.length} training images the pruned models disagree with the dense model on most. `,
      "Each thumbnail: the ground truth contour, the dense model's mask (tinted) and each pruned model's contour; ",
      "below it the disagreement per sparsity. Click one for the full image and its layers."),
    view.element);

  const enrichment = subgroups.enrichment;
  const pick = (group) => {
    if (view.select(group)) document.getElementById("gallery").scrollIntoView({ behavior: "smooth" });
  };
  const weak = h("section", { id: "who-is-weak" }, h("h2", {}, "Who is weak"),
    h("p", { class: "hint" }, `Each subgroup's share of HTL images relative to the overall ${percent(enrichment.htl_rate)}; `,
      "filled and starred: significant after Benjamini-Hochberg at 5%. Click a row to filter the gallery."),
    enrichmentPlot(enrichment.groups, pick), h("p", { class: "method" }, enrichment.method),
    subgroups.single_seed ? h("p", { class: "warning" }, "One training seed: intervals do not include seed variance.") : null);

  const gapBox = h("section", { id: "gap-closing" }, h("h2", {}, "Gap closing: did attention help the weak groups?"));
  const gaps = subgroups.gap_closing || {};
  for (const [split, gap] of Object.entries(gaps)) {
    const rows = [{ attribute: "overall", value: "", ...gap.overall }, ...gap.subgroups];
    gapBox.append(h("h3", {}, `${split} split`), gapPlot(gap),
      table(["Subgroup", "Images", "Dense Dice", "Attended Dice", ...(gap.overall.control_dice !== undefined ? ["Control Dice"] : [])],
        rows.map((r) => [r.attribute === "overall" ? "overall" : `${r.attribute} = ${r.value}`, r.n, fixed(r.dense_dice),
          fixed(r.attended_dice), ...(r.control_dice !== undefined ? [fixed(r.control_dice)] : [])])),
      h("p", { class: "method" }, gap.method));
  }
  if (!Object.keys(gaps).length) gapBox.append(h("p", {}, "No per-subgroup comparison for this job."));

  const agreement = h("section", { id: "scorer-agreement" }, h("h2", {}, "Scorer agreement"),
    metrics.scorer_agreement.length
      ? table(["Scorer", "Scorer", "Spearman", "Top-set overlap", "Top k"], metrics.scorer_agreement.map((a) =>
          [a.a, a.b, fixed(a.spearman), fixed(a.top_overlap, 2), a.top_k]), { testid: "scorer-agreement" })
      : h("p", {}, "Only the pruning scorer ran; add scorers (loss, el2n, forgetting, ...) to the spec to compare rankings."));

  const status = h("p", { role: "status", class: "hint" });
  // the pre-registered endpoint is the test split's when there is one (validation's is for choosing variants)
  const endpoint = metrics.splits.includes("test") ? await request(`/v1/jobs/${jobId}/metrics?split=test`) : metrics;
  const verdict = endpoint.verdict ? h("section", { id: "verdict" }, h("h2", {}, "Did attention help?"),
    h("p", { class: "verdict", testid: "verdict" }, endpoint.verdict),
    endpoint.focus ? h("p", { class: "method" }, endpoint.focus.method) : null) : null;
  const guesses = metrics.blank_guesses;
  const metricsBox = h("section", { id: "metrics" }, h("h2", {}, `Metrics (${metrics.split} split)`), metricsTable(metrics),
    guesses && guesses.n ? h("p", { class: "hint", testid: "blank-guesses" }, job.spec.setting === "weakly_supervised" ? `Localization is scored on the ${guesses.n} positive images with a mask. ` : "",
      `Guesses that read no pixel score Dice ${fixed(guesses.all_foreground)} (an all-foreground mask) and ${fixed(guesses.centred_disc)} `,
      "(a centred disc of the mean lesion size) on the same images.", ...guesses.warnings.map((w) => h("span", { class: "warning" }, ` ${w}`))) : null,
    metrics.splits.includes("test") ? h("p", { class: "hint" }, "Test split: ", h("a", { href: `/v1/jobs/${jobId}/metrics?split=test` }, "JSON")) : null,
    h("h3", {}, "Checkpoints"), recommendation(metrics.recommended_model),
    table(["Name", "Seed", "Sparsity", "Size", "sha256", ""], checkpoints.map((c) => [c.name, c.seed ?? "–", c.sparsity ?? "–", bytes(c.size_bytes),
      h("code", { title: c.sha256 }, c.sha256.slice(0, 12)),
      h("button", { type: "button", class: "secondary", onclick: () => download(c, status).catch((e) => { status.textContent = e.message; }) }, "Download")]),
      { testid: "checkpoints" }), status);

  const labelBox = labelCheckSection(metrics.label_check, issues, (id) => openDetail(id).catch((e) => alert(e.message)));
  const queueBox = job.spec.setting === "semi_supervised" ? annotationQueueSection(job, (id) => openDetail(id).catch((e) => alert(e.message))) : null;
  main.append(h("nav", { class: "toc" }, [...(verdict ? [["verdict", "Did attention help?"]] : []), ["gallery", "HTL gallery"],
    ["label-check", "Label check"], ...(queueBox ? [["annotation-queue", "Annotation queue"]] : []), ["who-is-weak", "Who is weak"],
    ["gap-closing", "Gap closing"], ["scorer-agreement", "Scorer agreement"],
    ["metrics", "Metrics and checkpoints"]].map(([id, text]) => h("a", { href: `#${id}` }, text))),
  ...(verdict ? [verdict] : []), galleryBox, labelBox, ...(queueBox ? [queueBox] : []), weak, gapBox, agreement, metricsBox);
  const wanted = /^#image=(.+)$/.exec(location.hash);
  if (wanted) openDetail(decodeURIComponent(wanted[1])).catch((e) => alert(e.message));
}

export async function render(main) {
  let job;
  try {
    job = await request(`/v1/jobs/${encodeURIComponent(jobId)}`);
  } catch (error) {
    if (error instanceof ApiError && (error.status === 404 || error.status === 422)) return notFound(main);
    throw error;
  }
  const dataset = await request(`/v1/datasets/${job.dataset_id}`).catch(() => null);
  const title = h("h1", {}, `Job ${job.id.slice(0, 8)}`);
  const problem = h("div");
  let top = header(job, dataset, cancel);
  main.replaceChildren(title, problem, top);
  document.title = `Job ${job.id.slice(0, 8)} · htl-miner`;

  async function cancel() {
    try {
      job = await request(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      refreshHeader();
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
  }

  function refreshHeader() {
    const fresh = header(job, dataset, cancel);
    top.replaceWith(fresh);
    top = fresh;
  }

  while (!FINISHED.includes(job.status)) {
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
    try {
      job = await request(`/v1/jobs/${job.id}`);
      problem.replaceChildren();
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
    refreshHeader();
  }
  if (job.status === "succeeded") await results(main, job);
}

// which model to use, chosen on validation; loud when attention sank the attended model
function recommendation(rec) {
  if (!rec) return null;
  return h("p", { class: rec.attention_sank ? "warning verdict" : "hint", testid: "recommended-model" },
    `Use the ${rec.model} model (download ${rec.download}): ${rec.reason}.`);
}
