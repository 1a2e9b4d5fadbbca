//! Test-only plugin for durable jobs. The plan picks the job its provision enqueues:
//! - `once`: a job that records its run in `ran/{resource}` (its attempt number) and counts
//!   it in `runs/{resource}` (so that two runs of one attempt show);
//! - `slow`: the same after busy-waiting 1.5 s (so the reply cannot have waited for it);
//! - `flaky`: asks to be retried until its third attempt, then records its run;
//! - `doomed`: fails for good (the dead-letter list);
//! - `later`: the `once` job, 2 s from now (for cancellation and crash tests);
//! - `chain`: a job that enqueues a `once` job;
//! - `nap`: sleeps 1 s (a WASI sleep, no CPU) before it records its run;
//! - `bomb`: a job that enqueues 16 more of itself (the stored-jobs limit must hold);
//! - `refuse`: enqueues a `once` job, then refuses the provision (so the job must not exist);
//! - `burst`: enqueues sixteen `once` jobs in the provision itself.
//!
//! A deprovision enqueues `cleanup`, which records `cleaned/{resource}`.

use addon_sdk::jobs::{self, Job, JobError};
use addon_sdk::log::{self, Level};
use addon_sdk::{DeprovisionRequest, Error, Provider, ProvisionReply, ProvisionRequest, Result, clock, kv};

struct Jobs;

fn record(job: &Job, prefix: &str) -> std::result::Result<(), JobError> {
    let resource = String::from_utf8_lossy(&job.payload).into_owned();
    kv::set_string(&format!("{prefix}/{resource}"), &job.attempt.to_string())
        .map_err(|e| jobs::retry(format!("{e:?}")))?;
    kv::increment(&format!("runs/{resource}"), 1).map_err(|e| jobs::retry(format!("{e:?}")))?;
    log::write(Level::Info, &format!("job {} ({}) ran for {resource}, attempt {}", job.id, job.kind, job.attempt));
    Ok(())
}

impl Provider for Jobs {
    fn provision(req: ProvisionRequest) -> Result<ProvisionReply> {
        let id = req.resource_id.as_bytes();
        let job = match req.plan.as_str() {
            "later" => jobs::enqueue("once", id, 2_000)?,
            "refuse" => {
                jobs::enqueue("once", id, 0)?;
                return Err(Error::invalid("refused after enqueueing a job"));
            }
            "burst" => {
                for _ in 0..15 {
                    jobs::enqueue("once", id, 0)?;
                }
                jobs::enqueue("once", id, 0)?
            }
            plan => jobs::enqueue(plan, id, 0)?,
        };
        Ok(ProvisionReply::new().var("JOBS_ENQUEUED", job))
    }

    fn deprovision(req: DeprovisionRequest) -> Result<()> {
        jobs::enqueue("cleanup", req.resource_id.as_bytes(), 0)?;
        Ok(())
    }

    fn run_job(job: Job) -> std::result::Result<(), JobError> {
        match job.kind.as_str() {
            "once" => record(&job, "ran"),
            "slow" => {
                let until = clock::now_ms() + 1_500;
                while clock::now_ms() < until {}
                record(&job, "ran")
            }
            "nap" => {
                std::thread::sleep(std::time::Duration::from_millis(1_000));
                record(&job, "ran")
            }
            "flaky" if job.attempt < 3 => Err(jobs::retry(format!("not yet (attempt {})", job.attempt))),
            "flaky" => record(&job, "ran"),
            "doomed" => Err(jobs::fail("this job can never succeed")),
            "chain" => {
                jobs::enqueue("once", &job.payload, 0).map_err(|e| jobs::retry(format!("{e:?}")))?;
                Ok(())
            }
            "cleanup" => record(&job, "cleaned"),
            "bomb" => {
                for _ in 0..16 {
                    jobs::enqueue("bomb", &job.payload, 0).map_err(|e| jobs::retry(format!("{e:?}")))?;
                }
                Ok(())
            }
            other => Err(jobs::fail(format!("unknown job kind `{other}`"))),
        }
    }
}

addon_sdk::export_provider!(Jobs);
