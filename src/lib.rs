//! backroom: an HTTP intake and a fleet of workers on Redis for multi-tenant inventory and order
//! businesses. `main.rs` only parses the command line; everything else lives here.

pub mod api;
pub mod clock;
pub mod config;
pub mod db;
pub mod domain;
pub mod forecast;
pub mod history;
pub mod jobs;
pub mod outbox;
pub mod process;
pub mod queue;
pub mod redis_conn;
pub mod telemetry;

/// The allocator of every binary built on this crate (the server, the workers, the tests and
/// benches). A job's run makes and frees hundreds of small allocations (Redis replies, JSON,
/// spans, SQL arguments) across threads; under that load glibc's malloc spent about a third of
/// the process's CPU in a `perf` profile of the stock bench (`_int_malloc`, `_int_free`,
/// `malloc_consolidate`). The queue bench's "client µs/job" column shows the difference. Without
/// transparent huge pages (`no_thp`): with them, memory is taken in 2 MiB steps and the API
/// process's peak while streaming an upload grew past the bound `tenant_abuse` checks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
