//! The integration suite: one test binary (one link) driving real processes, real Postgres and
//! real Redis through backroom's public surfaces.

#[path = "../support/mod.rs"]
mod support;

mod helpers;

mod dashboard;
mod emails;
mod faults;
mod forecasts;
mod foundation_auth;
mod foundation_health;
mod foundation_problems;
mod foundation_settings;
mod foundation_tenants;
mod http_limits;
mod invoices;
mod isolation;
mod job_history;
mod job_kinds;
mod job_search;
mod operators;
mod ops_kit;
mod queue_api;
mod queue_cluster;
mod queue_engine;
mod queue_faults;
mod queue_support;
mod queue_workflows;
mod secrets;
mod stock;
mod tenant_abuse;
mod tenant_limits;
mod tenant_quotas;
mod traces;
mod webhooks;
