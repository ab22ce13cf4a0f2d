// Jobs: every job of this key with live status, stage, progress, ETA and a cancel button.
import { getAll, request } from "../api.js";
import { duration, errorBox, eta, FINISHED, h, percent, statusBadge, table, when } from "../dom.js";

const POLL_MS = 2000;

export async function render(main) {
  const body = h("section", { "aria-label": "jobs" });
  const problem = h("div");
  main.replaceChildren(h("h1", {}, "Jobs"), h("p", {}, h("a", { class: "button", href: "/jobs/new" }, "New job")), problem, body);
  const names = Object.fromEntries((await getAll("/v1/datasets")).map((d) => [d.id, d.name]));

  async function cancel(job) {
    try {
      await request(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
    await refresh();
  }

  async function refresh() {
    const jobs = (await request("/v1/jobs?limit=100")).items;
    body.replaceChildren(jobs.length
      ? table(["Job", "Dataset", "Status", "Stage", "Progress", "ETA", "Submitted", ""], jobs.map((job) => {
          const left = eta(job);
          return [
            h("a", { href: `/jobs/${job.id}` }, job.id.slice(0, 8)),
            names[job.dataset_id] || job.dataset_id.slice(0, 8),
            statusBadge(job.status),
            job.stage || "–",
            h("span", { class: "progress" }, h("progress", { max: "1", value: String(job.progress) }), ` ${percent(job.progress)}`),
            left === null ? "–" : `~${duration(left)}`,
            when(job.created_at),
            FINISHED.includes(job.status) ? "" : h("button", { type: "button", class: "secondary", onclick: () => cancel(job) }, "Cancel"),
          ];
        }), { testid: "job-list" })
      : h("p", {}, "No jobs yet."));
    return jobs.some((job) => !FINISHED.includes(job.status));
  }

  const poll = async () => {
    let active = true;
    try {
      active = await refresh();
    } catch (error) {
      problem.replaceChildren(errorBox(error));
    }
    setTimeout(poll, active ? POLL_MS : 5 * POLL_MS);
  };
  await poll();
}
