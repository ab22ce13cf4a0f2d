// Entry point of every page: sign in when there is no key, then render the page named by the shell.
import { apiKey, checkKey, forgetKey, storeKey } from "./api.js";
import { h } from "./dom.js";

const PAGES = {
  datasets: () => import("./pages/datasets.js"),
  jobs: () => import("./pages/jobs.js"),
  "new-job": () => import("./pages/new-job.js"),
  job: () => import("./pages/job.js"),
  compare: () => import("./pages/compare.js"),
};

function signIn(main) {
  const message = h("p", { class: "error", role: "alert", hidden: true });
  const field = h("input", { type: "password", name: "api-key", id: "api-key", autocomplete: "current-password", required: true });
  const form = h("form", { class: "card narrow", testid: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", {}, "Paste an API key (create one with ", h("code", {}, "htl keys create --owner NAME"),
      "). It stays in this browser tab's session and is sent only in request headers."),
    h("label", { for: "api-key" }, "API key"), field,
    h("button", { type: "submit" }, "Sign in"), message);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await checkKey(field.value.trim());
      storeKey(field.value.trim());
      location.reload();
    } catch (error) {
      message.textContent = error.status === 401 ? "That API key is not valid." : error.message;
      message.hidden = false;
    }
  });
  main.replaceChildren(form);
  field.focus();
}

async function start() {
  const main = document.getElementById("main");
  const page = document.body.dataset.page;
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === page) link.setAttribute("aria-current", "page");
  }
  if (!apiKey()) return signIn(main);
  const signOut = document.getElementById("sign-out");
  signOut.hidden = false;
  signOut.addEventListener("click", () => { forgetKey(); location.reload(); });
  const module = await PAGES[page]();
  await module.render(main);
}

start().catch((error) => {
  document.getElementById("main").replaceChildren(h("p", { class: "error", role: "alert" }, `The page failed: ${error.message}`));
});
