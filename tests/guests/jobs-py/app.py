"""Test-only Python plugin for jobs and outbound HTTP (world `worker`), the same as
`tests/guests/jobs-js`: the plan is the job its provision enqueues (`once`, `flaky`, `fetch`)."""

from addon_sdk import HttpError, Provider, Reply, config, enqueue, fail, kv, provision_reply, retry, send


class WitWorld(Provider):
    def provision(self, req):
        job = enqueue(req.plan, req.resource_id)
        return provision_reply(Reply().set("JOBS_ENQUEUED", job))

    def run_job(self, job):
        resource = bytes(job.payload).decode()
        if job.kind == "flaky" and job.attempt < 3:
            raise retry(f"not yet (attempt {job.attempt})")
        if job.kind == "fetch":
            try:
                kv.set_string(f"fetched/{resource}", str(send("GET", config("probe_url")).status))
            except HttpError as e:
                kv.set_string(f"refused/{resource}", e.kind)
            return None
        if job.kind not in ("once", "flaky"):
            raise fail(f"unknown job kind {job.kind}")
        kv.set_string(f"ran/{resource}", str(job.attempt))
        return None
