// New job: a form built from the job spec's JSON Schema and defaults (GET /v1/job-spec), so it shows
// every option with its default and stays in step with the API. Values go to the API as typed;
// its validation messages are shown next to the fields they name.
import { ApiError, getAll, request } from "../api.js";
import { errorBox, h } from "../dom.js";

const ADVANCED = new Set(["semi", "weak"]);

function resolve(schema, root) {
  if (schema.$ref) return resolve(root.$defs[schema.$ref.split("/").pop()], root);
  if (schema.anyOf) {
    const options = schema.anyOf.filter((option) => option.type !== "null");
    if (options.length === 1) return { ...schema, ...resolve(options[0], root), nullable: true, anyOf: undefined };
  }
  return schema;
}

const isList = (schema) => schema.type === "array";
const choices = (schema) => schema.enum || (isList(schema) && schema.items && schema.items.enum) || null;

const label = (path) => path.split(".").pop(); // the spec's own key, as in a spec file

/** One input for one spec field; read() answers the value to send (or the raw text, for the API to judge). */
function field(path, schema, value) {
  const id = `f-${path.replace(/\./g, "-")}`;
  const about = (schema.description || "").replace(/([^.])$/, "$1.");
  const hint = h("small", { class: "hint" }, about, about ? " " : "",
    `Default: ${value === null ? "none" : Array.isArray(value) ? value.join(", ") || "none" : value}.`);
  const problem = h("small", { class: "field-error", role: "alert", hidden: true });
  let input, read;
  if (isList(schema) && choices(schema)) {
    const boxes = choices(schema).map((choice) => h("label", { class: "inline" },
      h("input", { type: "checkbox", name: path, value: choice, checked: (value || []).includes(choice) }), ` ${choice}`));
    input = h("span", { id, class: "choices" }, boxes);
    read = () => boxes.map((b) => b.firstChild).filter((b) => b.checked).map((b) => b.value);
  } else if (choices(schema)) {
    // a field that may be left unset (model.encoder) offers "none", which sends null
    const none = schema.nullable ? [h("option", { value: "", selected: value === null }, "none")] : [];
    input = h("select", { id, name: path }, none.concat(choices(schema).map((c) => h("option", { value: c, selected: c === value }, c))));
    read = () => (schema.nullable && input.value === "" ? null : input.value);
  } else if (schema.type === "boolean") {
    input = h("input", { id, name: path, type: "checkbox", checked: !!value });
    read = () => input.checked;
  } else {
    const text = value === null ? "" : Array.isArray(value) ? value.join(", ") : String(value);
    input = h("input", { id, name: path, type: "text", value: text, inputmode: isList(schema) || schema.type === "string" ? null : "decimal",
      placeholder: schema.nullable ? "none" : null });
    read = () => parse(input.value, schema);
  }
  const row = h("div", { class: "field", dataset: { path } }, h("label", { for: id }, label(path)), input, hint, problem);
  return { path, row, read, problem, initial: value };
}

function parse(text, schema) {
  const trimmed = text.trim();
  if (trimmed === "") return schema.nullable ? null : isList(schema) ? [] : trimmed;
  if (isList(schema)) return trimmed.split(",").map((part) => parse(part, schema.items || {}));
  if (schema.type === "integer" || schema.type === "number") return Number.isFinite(Number(trimmed)) ? Number(trimmed) : trimmed;
  return trimmed;
}

function setPath(target, path, value) {
  const keys = path.split(".");
  let node = target;
  for (const key of keys.slice(0, -1)) node = node[key] = node[key] || {};
  node[keys[keys.length - 1]] = value;
}

export async function render(main) {
  const { defaults, schema } = await request("/v1/job-spec");
  const datasets = await getAll("/v1/datasets");
  const chosen = new URLSearchParams(location.search).get("dataset");
  const fields = [];
  const sections = [];
  const general = [];
  for (const [key, raw] of Object.entries(schema.properties)) {
    const sub = resolve(raw, schema);
    if (sub.type === "object" && sub.properties) {
      const rows = Object.entries(sub.properties).map(([name, prop]) => {
        const f = field(`${key}.${name}`, resolve(prop, schema), defaults[key][name]);
        fields.push(f);
        return f.row;
      });
      const legend = h("legend", {}, key);
      const box = h("fieldset", { dataset: { path: key } }, legend, sub.description ? h("p", { class: "hint" }, sub.description) : null, rows);
      sections.push(ADVANCED.has(key) ? h("details", {}, h("summary", {}, `${key} options (only for the ${key === "semi" ? "semi_supervised" : "weakly_supervised"} setting)`), box) : box);
    } else {
      const f = field(key, sub, defaults[key]);
      fields.push(f);
      general.push(f.row);
    }
  }
  const datasetSelect = h("select", { id: "dataset", name: "dataset_id", required: true },
    h("option", { value: "" }, datasets.length ? "choose a dataset" : "no datasets: upload one first"),
    datasets.map((d) => h("option", { value: d.id, selected: d.id === chosen }, `${d.name} (${d.n_images} images)`)));
  const datasetProblem = h("small", { class: "field-error", role: "alert", hidden: true });
  const problems = h("div");
  const submit = h("button", { type: "submit" }, "Submit job");
  const form = h("form", { class: "card spec-form", novalidate: true },
    h("div", { class: "field", dataset: { path: "dataset_id" } }, h("label", { for: "dataset" }, "Dataset"), datasetSelect, datasetProblem),
    h("fieldset", { dataset: { path: "" } }, h("legend", {}, "general"), general),
    sections, problems, submit);

  function clear() {
    problems.replaceChildren();
    for (const el of form.querySelectorAll(".field-error")) { el.hidden = true; el.textContent = ""; }
  }

  function show(path, message) {
    const row = form.querySelector(`.field[data-path="${CSS.escape(path)}"]`);
    if (!row) return false;
    const slot = row.querySelector(".field-error");
    slot.textContent = slot.textContent ? `${slot.textContent}; ${message}` : message;
    slot.hidden = false;
    return true;
  }

  function showErrors(error) {
    if (!(error instanceof ApiError) || error.status !== 422) return problems.replaceChildren(errorBox(error));
    const loose = [];
    if (Array.isArray(error.detail)) {
      for (const item of error.detail) {
        let loc = (item.loc || []).filter((part) => part !== "body");
        if (loc[0] === "spec") loc = loc.slice(1);
        while (loc.length && typeof loc[loc.length - 1] === "number") loc = loc.slice(0, -1);
        if (!show(loc.join(".") || "dataset_id", item.msg)) loose.push(`${loc.join(".") || "spec"}: ${item.msg}`);
      }
    } else {
      const named = /spec\.([a-z_]+(?:\.[a-z_]+)?)/.exec(error.message);
      if (!named || !show(named[1], error.message)) loose.push(error.message);
    }
    problems.replaceChildren(h("p", { class: "error", role: "alert" }, "The API refused the job: fix the fields marked below."),
      loose.length ? h("ul", { class: "error" }, loose.map((m) => h("li", {}, m))) : null);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clear();
    if (!datasetSelect.value) return show("dataset_id", "choose a dataset");
    const spec = {};
    for (const f of fields) {
      const value = f.read();
      if (JSON.stringify(value) !== JSON.stringify(f.initial)) setPath(spec, f.path, value);
    }
    submit.disabled = true;
    try {
      const job = await request("/v1/jobs", { method: "POST", json: { dataset_id: datasetSelect.value, spec } });
      location.assign(`/jobs/${job.id}`);
    } catch (error) {
      showErrors(error);
      submit.disabled = false;
    }
  });
  main.replaceChildren(h("h1", {}, "New job"),
    h("p", {}, "Every field shows its default; change only what you need. The API checks the spec and the dataset before queueing."),
    form);
}
