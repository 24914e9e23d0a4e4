//! The stock ledger writer: applies many adjustments per transaction.
//!
//! One transaction per adjustment caps a ledger at the database's commit rate (pgbench runs this
//! very transaction at ~5,500/s here), so handlers hand their adjustment to [`StockLedger`], which
//! gathers whatever is waiting (up to 1,000) and applies it in one transaction:
//! 1. lock the touched products with `SELECT … FOR UPDATE` in (tenant, sku) order — the same
//!    order in every process, so concurrent batches never deadlock, and concurrent updates of a
//!    SKU are serialised (no lost update);
//! 2. look up which idempotency keys the ledger already has (a job delivered twice after a crash
//!    finds its movement and reports it instead of moving stock again);
//! 3. decide each adjustment in order (per SKU by `occurred_at`, then arrival), exactly as
//!    one-by-one processing would: an adjustment that would take a product without
//!    `allow_negative` below zero is rejected (`insufficient_stock`) and changes nothing;
//! 4. write movements, levels, daily sales and low-stock alerts with one set-based statement
//!    each (`UNNEST` arrays), and the `stock.adjusted` and `stock.low` webhook events of the
//!    tenants that want them.
//!
//! A database error fails the whole batch; each job then retries with backoff, and step 2 makes
//! the retry safe.

use crate::domain::{Delta, IdempotencyKey, Reason, Sku};
use crate::jobs;
use crate::jobs::emails::EmailJob;
use crate::jobs::webhooks::events::{self, Event, EventType};
use crate::outbox::{self, OutboxJob};
use anyhow::Context;
use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument as _;
use uuid::Uuid;

/// Most adjustments applied in one transaction.
const MAX_BATCH: usize = 1000;

/// A payload parsed again after the round trip through Redis.
#[derive(Debug, Clone)]
pub struct Adjustment {
    pub tenant_id: Uuid,
    pub sku: Sku,
    pub delta: Delta,
    pub reason: Reason,
    pub idempotency_key: IdempotencyKey,
    pub reference: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// What happened to one adjustment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Stock moved; the ledger row and the level after it.
    Moved {
        movement_id: i64,
        on_hand_after: i64,
    },
    /// The ledger already had this idempotency key: nothing moved again.
    AlreadyApplied {
        movement_id: i64,
        on_hand_after: i64,
    },
    InsufficientStock {
        on_hand: i64,
    },
    /// The level would leave the range a ledger can hold (a 64-bit count): refused, not wrapped.
    OutOfRange {
        on_hand: i64,
    },
    UnknownSku,
}

struct Pending {
    adjustment: Adjustment,
    job_id: String,
    /// The span of the job run that sent it, when that run is an OpenTelemetry span (the
    /// batch's span continues or links to it).
    sender: Option<tracing::Span>,
    /// The `traceparent` of the run that sent it: what it causes continues that trace.
    trace: Option<String>,
    reply: oneshot::Sender<Result<Applied, String>>,
}

/// Handle to the per-process ledger writer. Cheap to clone.
#[derive(Clone)]
pub struct StockLedger {
    tx: mpsc::Sender<Pending>,
}

impl StockLedger {
    /// Starts the writer task on `db`.
    pub fn start(db: PgPool) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_loop(db, rx));
        StockLedger { tx }
    }

    /// Applies one adjustment (batched with whatever else is waiting).
    pub async fn apply(&self, adjustment: Adjustment, job_id: &str) -> Result<Applied, String> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Pending {
                adjustment,
                job_id: job_id.to_string(),
                sender: crate::telemetry::traces::makes_spans(
                    &crate::telemetry::traces::current_unsampled(),
                )
                .then(tracing::Span::current),
                trace: crate::telemetry::traces::current_traceparent(),
                reply,
            })
            .await
            .map_err(|_| "the ledger writer stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the ledger writer dropped the adjustment".to_string())?
    }
}

/// What a job whose batch failed is told. The cause (a database error, perhaps quoting another
/// tenant's rows) goes to the worker's log, not to the tenant.
const BATCH_FAILED: &str = "the ledger could not apply this adjustment (a database error, logged by the worker); it will be retried";

/// The most other jobs' runs a batch's span links to.
const MAX_TRACE_LINKS: usize = 32;

async fn write_loop(db: PgPool, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        // Take what is already waiting; if that is little, give stragglers a moment to join.
        let gather_until = tokio::time::Instant::now() + Duration::from_millis(2);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) if batch.len() >= 64 => break,
                Err(_) => match tokio::time::timeout_at(gather_until, rx.recv()).await {
                    Ok(Some(p)) => batch.push(p),
                    _ => break,
                },
            }
        }
        apply_and_reply(&db, batch).await;
    }
}

/// Applies a batch and answers each of its jobs. When a batch of several tenants fails, each
/// tenant's share is tried again on its own, so that one tenant's rows that the database refuses,
/// or that another transaction holds locked past the lock timeout (see `crate::db::Role`), fail
/// only that tenant's jobs, which retry later.
async fn apply_and_reply(db: &PgPool, batch: Vec<Pending>) {
    let adjustments: Vec<(&Adjustment, &str)> = batch
        .iter()
        .map(|p| (&p.adjustment, p.job_id.as_str()))
        .collect();
    // One transaction serves the jobs of many traces: its span is a child of the first sampled
    // job's run and links to the others'. When no run is sampled, it is unsampled work of the
    // first one's trace.
    let mut traced = batch.iter().filter_map(|p| p.sender.as_ref());
    let lead = traced.next();
    let unsampled = match lead {
        Some(_) => None,
        None => crate::telemetry::traces::unsampled(batch[0].trace.as_deref()),
    };
    let span = crate::telemetry::traces::in_trace_sync(unsampled.clone(), || {
        tracing::info_span!(
            "db transaction",
            what = "stock batch",
            adjustments = batch.len(),
            trace_id = tracing::field::Empty
        )
    });
    match lead {
        Some(lead) => {
            crate::telemetry::traces::continue_span(&span, lead);
            for other in traced.take(MAX_TRACE_LINKS) {
                crate::telemetry::traces::link_span(&span, other);
            }
        }
        None => {
            if let Some(id) = batch[0]
                .trace
                .as_deref()
                .and_then(crate::telemetry::traces::trace_id_of)
            {
                span.record("trace_id", id);
            }
        }
    }
    let traces: Vec<Option<&str>> = batch.iter().map(|p| p.trace.as_deref()).collect();
    let error = match crate::telemetry::traces::in_trace(
        unsampled,
        apply_batch_sent_by(db, &adjustments, &traces),
    )
    .instrument(span)
    .await
    {
        Ok(outcomes) => {
            for (p, outcome) in batch.into_iter().zip(outcomes) {
                let _ = p.reply.send(Ok(outcome));
            }
            return;
        }
        Err(e) => e,
    };
    let mut by_tenant: HashMap<Uuid, Vec<Pending>> = HashMap::new();
    for p in batch {
        by_tenant.entry(p.adjustment.tenant_id).or_default().push(p);
    }
    if by_tenant.len() == 1 {
        let (tenant, jobs) = by_tenant.into_iter().next().expect("one tenant");
        tracing::warn!(error = %format!("{error:#}"), %tenant, size = jobs.len(), "stock batch failed; its jobs will retry");
        for p in jobs {
            let _ = p.reply.send(Err(BATCH_FAILED.to_string()));
        }
        return;
    }
    tracing::warn!(error = %format!("{error:#}"), tenants = by_tenant.len(), "stock batch of several tenants failed; trying each tenant's share alone");
    // At once, so that a share that waits (on a lock, up to the lock timeout) holds up no other.
    futures::future::join_all(
        by_tenant
            .into_values()
            .map(|jobs| Box::pin(apply_and_reply(db, jobs))),
    )
    .await;
}

/// The state of one product while a batch is decided.
struct Level {
    on_hand: i64,
    allow_negative: bool,
    reorder_point: i64,
    below_reorder: bool,
    changed: bool,
}

type Tx<'c> = sqlx::Transaction<'c, sqlx::Postgres>;

/// Applies adjustments in one transaction; returns one outcome per input, in input order.
pub async fn apply_batch(
    db: &PgPool,
    items: &[(&Adjustment, &str)],
) -> anyhow::Result<Vec<Applied>> {
    apply_batch_sent_by(db, items, &[]).await
}

/// [`apply_batch`], where `traces[i]` is the `traceparent` of the job run that sent item `i`:
/// what the item causes (its low-stock alert, its webhook events) continues that run's trace,
/// not the batch's (which is the first sender's; the batch may hold several tenants' items).
async fn apply_batch_sent_by(
    db: &PgPool,
    items: &[(&Adjustment, &str)],
    traces: &[Option<&str>],
) -> anyhow::Result<Vec<Applied>> {
    let trace_of = |i: usize| traces.get(i).copied().flatten().map(str::to_string);
    let mut tx = db.begin().await.context("while starting a stock batch")?;
    let mut levels = lock_levels(&mut tx, items).await?;
    let existing = movements_with_keys(&mut tx, items).await?;
    let Decided {
        mut outcomes,
        accepted,
        repeats,
        alerts,
        mut crossings,
    } = decide(items, &mut levels, &existing, &trace_of);
    let ids = write_movements(&mut tx, items, &accepted).await?;
    let mut moved = Vec::with_capacity(accepted.len() + crossings.len());
    for (&(i, after), id) in accepted.iter().zip(ids) {
        outcomes[i] = Some(Applied::Moved {
            movement_id: id,
            on_hand_after: after,
        });
        let mut event = adjusted_event(items[i].0, id, after);
        event.trace = trace_of(i);
        moved.push(event);
    }
    moved.append(&mut crossings);
    events::record(&mut tx, &moved)
        .await
        .context("while recording webhook events")?;
    for (i, first) in repeats {
        outcomes[i] = Some(match outcomes[first].clone() {
            Some(Applied::Moved {
                movement_id,
                on_hand_after,
            }) => Applied::AlreadyApplied {
                movement_id,
                on_hand_after,
            },
            other => other.expect("decided before its repeats"),
        });
    }

    write_levels(&mut tx, &levels).await?;
    record_daily_sales(&mut tx, items, &accepted).await?;
    outbox::add(&mut tx, &alerts)
        .await
        .context("while queueing low-stock alerts")?;
    tx.commit()
        .await
        .context("while committing a stock batch")?;
    Ok(outcomes
        .into_iter()
        .map(|o| o.expect("every adjustment decided"))
        .collect())
}

/// The `stock.adjusted` event of an applied adjustment.
fn adjusted_event(a: &Adjustment, movement_id: i64, on_hand_after: i64) -> Event {
    Event::new(
        a.tenant_id,
        EventType::StockAdjusted,
        serde_json::json!({
            "sku": a.sku.as_str(), "delta": a.delta.get(), "reason": a.reason.as_str(),
            "on_hand_after": on_hand_after, "idempotency_key": a.idempotency_key.as_str(),
            "reference": a.reference, "movement_id": movement_id,
            "occurred_at": a.occurred_at,
        }),
    )
}

/// The products a batch touches, locked in (tenant, sku) order, by (tenant, sku).
async fn lock_levels(
    tx: &mut Tx<'_>,
    items: &[(&Adjustment, &str)],
) -> anyhow::Result<HashMap<(Uuid, String), Level>> {
    let mut keys: Vec<(Uuid, String)> = items
        .iter()
        .map(|(a, _)| (a.tenant_id, a.sku.as_str().to_string()))
        .collect();
    keys.sort();
    keys.dedup();
    let (tenants, skus): (Vec<Uuid>, Vec<String>) = keys.into_iter().unzip();
    let rows = sqlx::query!(
        r#"SELECT p.tenant_id, p.sku, p.on_hand, p.allow_negative, p.reorder_point, p.below_reorder
           FROM products p
           JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, sku)
             ON p.tenant_id = k.tenant_id AND p.sku = k.sku
           ORDER BY p.tenant_id, p.sku
           FOR UPDATE OF p"#,
        &tenants,
        &skus
    )
    .fetch_all(&mut **tx)
    .await
    .context("while locking products")?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                (r.tenant_id, r.sku),
                Level {
                    on_hand: r.on_hand,
                    allow_negative: r.allow_negative,
                    reorder_point: r.reorder_point,
                    below_reorder: r.below_reorder,
                    changed: false,
                },
            )
        })
        .collect())
}

/// The movements the ledger already has for the batch's idempotency keys: (movement, level after).
async fn movements_with_keys(
    tx: &mut Tx<'_>,
    items: &[(&Adjustment, &str)],
) -> anyhow::Result<HashMap<(Uuid, String), (i64, i64)>> {
    let key_tenants: Vec<Uuid> = items.iter().map(|(a, _)| a.tenant_id).collect();
    let key_values: Vec<String> = items
        .iter()
        .map(|(a, _)| a.idempotency_key.as_str().to_string())
        .collect();
    Ok(sqlx::query!(
        r#"SELECT m.tenant_id, m.idempotency_key, m.id, m.on_hand_after
           FROM stock_movements m
           JOIN UNNEST($1::uuid[], $2::text[]) AS k(tenant_id, key)
             ON m.tenant_id = k.tenant_id AND m.idempotency_key = k.key"#,
        &key_tenants,
        &key_values
    )
    .fetch_all(&mut **tx)
    .await
    .context("while looking up idempotency keys")?
    .into_iter()
    .map(|r| ((r.tenant_id, r.idempotency_key), (r.id, r.on_hand_after)))
    .collect())
}

/// What [`decide`] made of a batch.
struct Decided {
    /// Outcomes decided so far (`None` for the accepted, until their movements are written, and
    /// for repeats).
    outcomes: Vec<Option<Applied>>,
    /// Accepted movements, in decision order: (index into the batch, level after).
    accepted: Vec<(usize, i64)>,
    /// Repeats of a key within the batch: (index, index of its first occurrence).
    repeats: Vec<(usize, usize)>,
    /// Low-stock alerts for the crossings below a reorder point.
    alerts: Vec<OutboxJob>,
    /// Those crossings as webhook events.
    crossings: Vec<Event>,
}

/// Decides each adjustment in order, exactly as one-by-one processing would, updating `levels`
/// in memory. No I/O: the caller writes what was decided.
fn decide(
    items: &[(&Adjustment, &str)],
    levels: &mut HashMap<(Uuid, String), Level>,
    existing: &HashMap<(Uuid, String), (i64, i64)>,
    trace_of: &dyn Fn(usize) -> Option<String>,
) -> Decided {
    // Decide in order: per SKU by occurred_at, then arrival.
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| {
        let a = items[i].0;
        (a.tenant_id, a.sku.as_str().to_string(), a.occurred_at, i)
    });
    let mut outcomes: Vec<Option<Applied>> = vec![None; items.len()];
    // Accepted movements (index into items, on_hand_after); repeats of a key within the batch
    // point at the first occurrence.
    let mut accepted: Vec<(usize, i64)> = vec![];
    let mut first_with_key: HashMap<(Uuid, &str), usize> = HashMap::new();
    let mut repeats: Vec<(usize, usize)> = vec![];
    let mut alerts: Vec<OutboxJob> = vec![];
    let mut crossings: Vec<Event> = vec![];
    for i in order {
        let a = items[i].0;
        let key = (a.tenant_id, a.idempotency_key.as_str().to_string());
        if let Some(&(movement_id, on_hand_after)) = existing.get(&key) {
            outcomes[i] = Some(Applied::AlreadyApplied {
                movement_id,
                on_hand_after,
            });
            continue;
        }
        if let Some(&first) = first_with_key.get(&(a.tenant_id, a.idempotency_key.as_str())) {
            repeats.push((i, first));
            continue;
        }
        first_with_key.insert((a.tenant_id, a.idempotency_key.as_str()), i);
        let Some(level) = levels.get_mut(&(a.tenant_id, a.sku.as_str().to_string())) else {
            outcomes[i] = Some(Applied::UnknownSku);
            continue;
        };
        let Some(after) = level.on_hand.checked_add(a.delta.get()) else {
            outcomes[i] = Some(Applied::OutOfRange {
                on_hand: level.on_hand,
            });
            continue;
        };
        if after < 0 && !level.allow_negative {
            outcomes[i] = Some(Applied::InsufficientStock {
                on_hand: level.on_hand,
            });
            continue;
        }
        level.on_hand = after;
        level.changed = true;
        let below = after < level.reorder_point;
        if below && !level.below_reorder {
            let alert = EmailJob::LowStock {
                tenant_id: a.tenant_id,
                sku: a.sku.as_str().to_string(),
                on_hand: after,
                reorder_point: level.reorder_point,
                crossing: a.idempotency_key.as_str().to_string(),
            };
            let mut alert = jobs::outbox_job(
                &alert,
                format!(
                    "low-stock:{}:{}:{}",
                    a.tenant_id,
                    a.sku.as_str(),
                    a.idempotency_key.as_str()
                ),
            );
            alert.trace = trace_of(i);
            alerts.push(alert);
            let mut crossing = Event::new(
                a.tenant_id,
                EventType::StockLow,
                serde_json::json!({
                    "sku": a.sku.as_str(), "on_hand": after, "reorder_point": level.reorder_point,
                    "idempotency_key": a.idempotency_key.as_str(),
                }),
            );
            crossing.trace = trace_of(i);
            crossings.push(crossing);
        }
        level.below_reorder = below;
        accepted.push((i, after));
    }
    Decided {
        outcomes,
        accepted,
        repeats,
        alerts,
        crossings,
    }
}

/// Writes the accepted movements in decision order (so ids follow the order stock moved in);
/// returns their ids.
async fn write_movements(
    tx: &mut Tx<'_>,
    items: &[(&Adjustment, &str)],
    accepted: &[(usize, i64)],
) -> anyhow::Result<Vec<i64>> {
    let pick = |f: &dyn Fn(&Adjustment) -> String| -> Vec<String> {
        accepted.iter().map(|&(i, _)| f(items[i].0)).collect()
    };
    let m_tenants: Vec<Uuid> = accepted
        .iter()
        .map(|&(i, _)| items[i].0.tenant_id)
        .collect();
    let m_skus = pick(&|a| a.sku.as_str().to_string());
    let m_deltas: Vec<i64> = accepted
        .iter()
        .map(|&(i, _)| items[i].0.delta.get())
        .collect();
    let m_reasons = pick(&|a| a.reason.as_str().to_string());
    let m_refs: Vec<Option<String>> = accepted
        .iter()
        .map(|&(i, _)| items[i].0.reference.clone())
        .collect();
    let m_keys = pick(&|a| a.idempotency_key.as_str().to_string());
    let m_at: Vec<DateTime<Utc>> = accepted
        .iter()
        .map(|&(i, _)| items[i].0.occurred_at)
        .collect();
    let m_after: Vec<i64> = accepted.iter().map(|&(_, after)| after).collect();
    let m_jobs: Vec<String> = accepted
        .iter()
        .map(|&(i, _)| items[i].1.to_string())
        .collect();
    sqlx::query_scalar!(
        r#"INSERT INTO stock_movements
             (tenant_id, sku, delta, reason, reference, idempotency_key, occurred_at, on_hand_after, job_id)
           SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::text[], $5::text[],
                                $6::text[], $7::timestamptz[], $8::bigint[], $9::text[])
           RETURNING id"#,
        &m_tenants,
        &m_skus,
        &m_deltas,
        &m_reasons,
        &m_refs as &[Option<String>],
        &m_keys,
        &m_at,
        &m_after,
        &m_jobs
    )
    .fetch_all(&mut **tx)
    .await
    .context("while writing movements")
}

async fn write_levels(
    tx: &mut Tx<'_>,
    levels: &HashMap<(Uuid, String), Level>,
) -> anyhow::Result<()> {
    let changed: Vec<(&(Uuid, String), &Level)> =
        levels.iter().filter(|(_, l)| l.changed).collect();
    let l_tenants: Vec<Uuid> = changed.iter().map(|(k, _)| k.0).collect();
    let l_skus: Vec<String> = changed.iter().map(|(k, _)| k.1.clone()).collect();
    let l_on_hand: Vec<i64> = changed.iter().map(|(_, l)| l.on_hand).collect();
    let l_below: Vec<bool> = changed.iter().map(|(_, l)| l.below_reorder).collect();
    sqlx::query!(
        r#"UPDATE products p
           SET on_hand = u.on_hand, below_reorder = u.below, updated_at = now()
           FROM UNNEST($1::uuid[], $2::text[], $3::bigint[], $4::bool[]) AS u(tenant_id, sku, on_hand, below)
           WHERE p.tenant_id = u.tenant_id AND p.sku = u.sku"#,
        &l_tenants,
        &l_skus,
        &l_on_hand,
        &l_below
    )
    .execute(&mut **tx)
    .await
    .context("while updating stock levels")?;
    Ok(())
}

/// Daily sales (units sold per product and UTC day) from the accepted sale movements.
async fn record_daily_sales(
    tx: &mut Tx<'_>,
    items: &[(&Adjustment, &str)],
    accepted: &[(usize, i64)],
) -> anyhow::Result<()> {
    let mut sales: HashMap<(Uuid, String, NaiveDate), i64> = HashMap::new();
    for &(i, _) in accepted {
        let a = items[i].0;
        if a.reason == Reason::Sale {
            *sales
                .entry((
                    a.tenant_id,
                    a.sku.as_str().to_string(),
                    a.occurred_at.date_naive(),
                ))
                .or_default() += -a.delta.get();
        }
    }
    if !sales.is_empty() {
        let mut s_tenants = vec![];
        let mut s_skus = vec![];
        let mut s_days = vec![];
        let mut s_qty = vec![];
        for ((t, s, d), q) in sales {
            s_tenants.push(t);
            s_skus.push(s);
            s_days.push(d);
            s_qty.push(q);
        }
        sqlx::query!(
            r#"INSERT INTO daily_sales (tenant_id, sku, day, source, quantity)
               SELECT t, s, d, 'ledger', q FROM UNNEST($1::uuid[], $2::text[], $3::date[], $4::bigint[]) AS u(t, s, d, q)
               ON CONFLICT (tenant_id, sku, day, source)
               DO UPDATE SET quantity = daily_sales.quantity + EXCLUDED.quantity"#,
            &s_tenants,
            &s_skus,
            &s_days,
            &s_qty
        )
        .execute(&mut **tx)
        .await
        .context("while recording daily sales")?;
    }
    Ok(())
}
