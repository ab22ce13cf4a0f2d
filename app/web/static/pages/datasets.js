// Datasets: upload a folder's archive (with a progress bar) and list what was uploaded.
import { getAll, upload } from "../api.js";
import { bytes, errorBox, h, table, when } from "../dom.js";

const LAYOUT_NAMES = { htl: "images/ + masks/", isic: "ISIC challenge", kvasir: "Kvasir-SEG", coco: "COCO JSON" };

function summary(dataset) {
  return h("div", { class: "card", testid: "dataset-summary" },
    h("h2", {}, `Uploaded ${dataset.name}`),
    h("p", {}, `${dataset.n_images} images, ${dataset.n_masks} masks, ${bytes(dataset.size_bytes)}; read as the ${LAYOUT_NAMES[dataset.layout] || dataset.layout} layout.`),
    h("p", {}, "Attributes: ", dataset.attributes.length ? dataset.attributes.join(", ") : "none (no metadata.csv columns)"),
    dataset.warnings.length ? h("ul", { class: "warnings" }, dataset.warnings.map((w) => h("li", {}, w))) : null,
    h("a", { class: "button", href: `/jobs/new?dataset=${dataset.id}` }, "Run a job on it"));
}

export async function render(main) {
  const list = h("section", { "aria-label": "datasets" });
  const result = h("div");
  const bar = h("progress", { max: "1", value: "0", hidden: true, testid: "upload-progress" });
  const status = h("p", { class: "status", role: "status" });
  const file = h("input", { type: "file", id: "archive", name: "file", accept: ".zip,.tar.gz,.tgz", required: true });
  const name = h("input", { type: "text", id: "dataset-name", name: "name", maxlength: "200", placeholder: "default: the archive's file name" });
  const button = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card" },
    h("h2", {}, "Upload a dataset"),
    h("p", { class: "hint" }, "A .zip or .tar.gz of a folder holding images/ (jpg or png), masks/ (",
      h("code", {}, "<image_id>_segmentation.png"), " or ", h("code", {}, "<image_id>.png"),
      "; any image may lack one) and, optionally, metadata.csv with an image_id column."),
    h("label", { for: "archive" }, "Archive"), file,
    h("label", { for: "dataset-name" }, "Name"), name,
    button, bar, status);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const body = new FormData();
    body.append("file", file.files[0]);
    if (name.value.trim()) body.append("name", name.value.trim());
    button.disabled = true;
    bar.hidden = false;
    result.replaceChildren();
    try {
      const dataset = await upload("/v1/datasets", body, (sent, total, done) => {
        bar.value = sent / total;
        status.textContent = done ? "Uploaded; checking the archive…" : `Uploading… ${bytes(sent)} of ${bytes(total)}`;
      });
      status.textContent = "";
      result.replaceChildren(summary(dataset));
      form.reset();
      await refresh();
    } catch (error) {
      status.textContent = "";
      result.replaceChildren(errorBox(error));
    } finally {
      button.disabled = false;
      bar.hidden = true;
      bar.value = 0;
    }
  });

  async function refresh() {
    const datasets = await getAll("/v1/datasets");
    list.replaceChildren(h("h2", {}, "Your datasets"), datasets.length
      ? table(["Name", "Images", "Masks", "Size", "Attributes", "Warnings", "Uploaded", ""], datasets.map((d) => [
          d.name, d.n_images, d.n_masks, bytes(d.size_bytes), d.attributes.join(", ") || "–",
          d.warnings.length ? h("details", {}, h("summary", {}, `${d.warnings.length}`), h("ul", {}, d.warnings.map((w) => h("li", {}, w)))) : "–",
          when(d.created_at), h("span", {}, h("a", { href: `/jobs/new?dataset=${d.id}` }, "New job"), " · ",
            h("a", { href: `/datasets/${d.id}/compare` }, "Compare jobs"))]), { testid: "dataset-list" })
      : h("p", {}, "No datasets yet: upload one above."));
  }

  main.replaceChildren(h("h1", {}, "Datasets"), form, result, list);
  await refresh();
}
