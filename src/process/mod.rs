//! Process wiring: what each command of the binary runs. `serve` ([`serve`], on the bounded
//! HTTP server in [`http`]), `work` ([`work`]), `schedule` ([`schedule`]) and `dev` ([`dev`]).
//! Nothing below `crate::jobs`, `crate::queue` or `crate::domain` imports from here.

pub mod dev;
pub mod http;
pub mod schedule;
pub mod serve;
pub mod work;
