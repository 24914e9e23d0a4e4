//! The Lua scripts that change a queue's state. Each runs atomically inside Redis, touches only
//! keys under the queue's hash tag, and works on bounded batches (never `unpack` of an unbounded
//! list), so a script's cost depends on its batch, not on the backlog.
//!
//! Conventions: `KEYS[1]` is the stream (it routes the call in a cluster); `ARGV[1]` the key
//! prefix; times are milliseconds since the epoch passed in by the caller (injectable clocks).

use redis::Script;
use std::sync::LazyLock;

/// Shared helpers, prepended to the scripts that need them.
const COMMON: &str = r#"
local function job_key(prefix, id) return prefix .. ':job:' .. id end

-- Appends {attempt, at, error} to the job's error history (newest 25 kept).
local function add_error(jk, attempt, now, err)
  local raw = redis.call('HGET', jk, 'errors')
  local list = {}
  if raw then list = cjson.decode(raw) end
  table.insert(list, {attempt = attempt, at = now, error = err})
  while #list > 25 do table.remove(list, 1) end
  redis.call('HSET', jk, 'errors', cjson.encode(list), 'last_error', err)
end

-- Dependencies and groups (see `client::deps`, `client::groups`). A job that others wait for
-- has the field `children` and a list `:children:<id>` of their ids; a member of a group has the
-- field `group`. When such a job finishes, its `settles` count goes up (the epoch of this
-- outcome), its id goes into `:settle` (the jobs whose children and group are still to be
-- told: a crash before they are told is repaired from there), and the children list lives as
-- long as the job.
local function parent_finished(prefix, jk, id, now, ttl)
  redis.call('HINCRBY', jk, 'settles', 1)
  redis.call('ZADD', prefix .. ':settle', now, id)
  redis.call('PEXPIRE', prefix .. ':children:' .. id, ttl)
end

-- Finished jobs wait in `:history` for the copier that keeps them in Postgres (`history`), when
-- the job history is on (`:history:on`, set by `work` processes at start to the most that may
-- wait: a bound on Redis memory should every copier stop for long).
local function to_history(prefix, ids)
  if #ids == 0 then return end
  local cap = tonumber(redis.call('GET', prefix .. ':history:on') or '0') or 0
  if redis.call('LLEN', prefix .. ':history') + #ids > cap then return end
  for j = 1, #ids, 400 do
    redis.call('RPUSH', prefix .. ':history', unpack(ids, j, math.min(j + 399, #ids)))
  end
end

-- Ends a job for good in a finished set (succeeded, failed, dead) with its retention.
local function finish(prefix, jk, id, status, now, ttl)
  to_history(prefix, {id})
  redis.call('HSET', jk, 'status', status, 'finished_at', now)
  redis.call('HDEL', jk, 'worker', 'entry')
  redis.call('ZADD', prefix .. ':' .. status, now, id)
  redis.call('PEXPIRE', jk, ttl)
  redis.call('PEXPIRE', prefix .. ':parents:' .. id, ttl)
  local h = redis.call('HMGET', jk, 'children', 'group')
  local told = (h[1] or h[2]) and true or false
  if told then parent_finished(prefix, jk, id, now, ttl) end
  return told
end

-- Per-tenant concurrency limits and pause. `:active` counts each tenant's jobs in the stream
-- (delivered: running or prefetched), `:limits` holds each tenant's limit (field '*' the queue's
-- default; none or 0 is no limit), `:tpaused` the paused tenants. A tenant with jobs waiting is
-- in exactly one of the ring (it may run) and `:parked` (paused or at its limit), so a fetch
-- never visits a tenant it cannot serve, and a parked tenant returns to the ring the moment a
-- slot frees or it is resumed.
local function own_or_default(hash, tenant)
  local v = redis.call('HMGET', hash, tenant, '*')
  local l = v[1]
  if not l and tenant ~= '' then l = v[2] end
  return tonumber(l or '0') or 0
end

local function limit_of(prefix, tenant) return own_or_default(prefix .. ':limits', tenant) end

-- Per-tenant rates: at most `rate` of a tenant's jobs start per second, with a burst of one
-- second's worth (at least one job), across every worker process (a GCRA: `:tat` holds each
-- rated tenant's theoretical arrival time in ms). `:rates` holds each tenant's rate (field '*'
-- the queue's default; none or 0 is no rate); `:slowed` the tenants with jobs waiting that used
-- their allowance, scored by when their next job may start. A tenant with jobs waiting is in
-- exactly one of the ring, `:parked` and `:slowed`.
local function rate_of(prefix, tenant) return own_or_default(prefix .. ':rates', tenant) end

local function rate_window(rate) return math.max(1000, 1000 / rate) end

local function active_of(prefix, tenant)
  return tonumber(redis.call('HGET', prefix .. ':active', tenant) or '0')
end

local function eligible(prefix, tenant)
  if redis.call('SISMEMBER', prefix .. ':tpaused', tenant) == 1 then return false end
  local limit = limit_of(prefix, tenant)
  return limit <= 0 or active_of(prefix, tenant) < limit
end

local function wake(prefix, n)
  redis.call('XADD', prefix .. ':wake', 'MAXLEN', '1', '*', 'n', n)
end

-- A tenant whose list just got its first job: into the ring, or parked.
local function ring_or_park(prefix, tenant)
  if eligible(prefix, tenant) then
    redis.call('RPUSH', prefix .. ':ring', tenant)
  else
    redis.call('SADD', prefix .. ':parked', tenant)
  end
end

-- Slowed tenants whose next job may start by `now` go back to the ring (or parked); returns
-- how many.
local function unslow(prefix, now)
  local slowed = prefix .. ':slowed'
  local due = redis.call('ZRANGEBYSCORE', slowed, '-inf', now, 'LIMIT', 0, 100)
  for _, t in ipairs(due) do
    redis.call('ZREM', slowed, t)
    if redis.call('LLEN', prefix .. ':ready:' .. t) > 0 then ring_or_park(prefix, t) end
  end
  return #due
end

-- `n` of a tenant's jobs left the stream: gives back their slots and, if the tenant was parked
-- and may run again, returns it to the ring and wakes fetchers.
local function freed(prefix, tenant, n)
  local left = redis.call('HINCRBY', prefix .. ':active', tenant, -n)
  if left <= 0 then redis.call('HDEL', prefix .. ':active', tenant) end
  if redis.call('SISMEMBER', prefix .. ':parked', tenant) == 1 and eligible(prefix, tenant) then
    redis.call('SREM', prefix .. ':parked', tenant)
    redis.call('RPUSH', prefix .. ':ring', tenant)
    wake(prefix, 1)
  end
end

-- Puts a job in its tenant's ready list (at the front for a job handed back unstarted) and the
-- tenant in the round-robin ring (or parked) when its list was empty. The caller sets the job's
-- status and calls `readied` once at the end.
local function make_ready(prefix, id, tenant, front)
  local list = prefix .. ':ready:' .. tenant
  local len
  if front then len = redis.call('LPUSH', list, id) else len = redis.call('RPUSH', list, id) end
  if len == 1 then ring_or_park(prefix, tenant) end
end

-- Counts `n` jobs made ready and wakes fetchers blocked on the wake-up stream.
local function readied(prefix, n)
  if n > 0 then
    redis.call('INCRBY', prefix .. ':waiting', n)
    wake(prefix, n)
  end
end

-- Takes a waiting job out of its tenant's ready list (cancel, discard). O(list) but only for one
-- admin action; a job already moved into the stream is deleted from it instead.
local function unready(prefix, stream, id, tenant, entry)
  if entry then
    redis.call('XDEL', stream, entry)
    freed(prefix, tenant or '', 1)
    return
  end
  local list = prefix .. ':ready:' .. (tenant or '')
  if redis.call('LREM', list, 1, id) == 1 then
    redis.call('DECR', prefix .. ':waiting')
    if redis.call('LLEN', list) == 0 then
      redis.call('LREM', prefix .. ':ring', 1, tenant or '')
      redis.call('SREM', prefix .. ':parked', tenant or '')
      redis.call('ZREM', prefix .. ':slowed', tenant or '')
    end
  end
end

-- Moves up to `count` waiting jobs into the stream, round robin over the tenants that have
-- jobs waiting: each turn gives the next tenant in the ring an equal share of what is left,
-- and a tenant with more waiting goes to the back of the ring. A tenant with a flood of jobs
-- therefore takes its share of each fetch, never the whole of it. A tenant with a limit gets at
-- most its free slots, and is parked once they are taken; a tenant with a rate gets at most
-- its allowance, and is slowed once it is used.
local function fill(prefix, stream, count, now)
  unslow(prefix, now)
  local ring = prefix .. ':ring'
  local moved = 0
  local active = redis.call('LLEN', ring)
  while moved < count and active > 0 do
    local tenant = redis.call('LPOP', ring)
    local list = prefix .. ':ready:' .. tenant
    local share = math.ceil((count - moved) / active)
    local limit = limit_of(prefix, tenant)
    local running = 0
    if limit > 0 then
      running = active_of(prefix, tenant)
      share = math.min(share, limit - running)
    end
    local rate = rate_of(prefix, tenant)
    local tat = now
    if rate > 0 then
      tat = math.max(now, tonumber(redis.call('HGET', prefix .. ':tat', tenant) or '0'))
      share = math.min(share, math.floor((now + rate_window(rate) - tat) * rate / 1000 + 1e-9))
    end
    local ids = false
    if share > 0 then ids = redis.call('LPOP', list, share) end
    if ids then
      -- The fetch delivers these entries in the same call, and `take` records each entry.
      for _, id in ipairs(ids) do redis.call('XADD', stream, '*', 'id', id) end
      moved = moved + #ids
      running = running + #ids
      redis.call('HINCRBY', prefix .. ':active', tenant, #ids)
      if rate > 0 then
        tat = tat + #ids * 1000 / rate
        redis.call('HSET', prefix .. ':tat', tenant, tat)
      end
    end
    if redis.call('LLEN', list) > 0 then
      local next_at = rate > 0 and tat + 1000 / rate - rate_window(rate) or now
      if limit > 0 and running >= limit then
        redis.call('SADD', prefix .. ':parked', tenant)
      elseif next_at > now then
        redis.call('ZADD', prefix .. ':slowed', next_at, tenant)
      else
        redis.call('RPUSH', ring, tenant)
      end
    end
    active = redis.call('LLEN', ring)
  end
  if moved > 0 then redis.call('DECRBY', prefix .. ':waiting', moved) end
  return moved
end

-- Hands the job behind a freshly delivered stream entry to `consumer`, appending its fields to
-- `out` (9 per job). Entries of cancelled, deleted or finished jobs are dropped; a job that has
-- already started `max_attempts` times without finishing (its workers died each time) is dead.
local function take(prefix, stream, group, consumer, now, dead_ttl, entry, id, out)
  local jk = job_key(prefix, id)
  local h = redis.call('HMGET', jk, 'status', 'payload', 'attempts', 'max_attempts', 'kind', 'tenant', 'created_at', 'trace')
  if h[1] ~= 'queued' and h[1] ~= 'running' then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    freed(prefix, h[6] or '', 1)
    return
  end
  local attempts = tonumber(h[3] or '0') + 1
  local max = tonumber(h[4] or '1')
  if attempts > max then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    freed(prefix, h[6] or '', 1)
    add_error(jk, attempts - 1, now, 'gave up: the worker running attempt ' .. (attempts - 1) ..
      ' of ' .. max .. ' was lost (killed, crashed or stalled past its lease)')
    finish(prefix, jk, id, 'dead', now, dead_ttl)
    return
  end
  redis.call('HSET', jk, 'status', 'running', 'attempts', attempts, 'started_at', now,
    'worker', consumer, 'entry', entry)
  local n = #out
  out[n + 1] = entry
  out[n + 2] = id
  out[n + 3] = h[2]
  out[n + 4] = attempts
  out[n + 5] = max
  out[n + 6] = h[5] or ''
  out[n + 7] = h[6] or ''
  out[n + 8] = h[7] or '0'
  out[n + 9] = h[8] or ''
end
"#;

fn with_common(body: &str) -> Script {
    Script::new(&format!("{COMMON}\n{body}"))
}

/// Enqueues a batch. ARGV: prefix, now, idempotency_ttl_ms, count, then per job: id, kind,
/// tenant, payload, max_attempts, run_at (0 = now), idempotency key ('' = none), preset ('1' when
/// the caller chose the id: children may already wait for it), on_fail ('cancel' or 'run'),
/// group id ('' = none), traceparent ('' = none), the number of parents, and the parents' ids. A job with parents is `waiting` (in `:held`
/// and, until its edges are recorded in the parents' queues, in `:linking`), its parents a hash
/// `:parents:<id>` of parent id → "<epoch>:<state>" (epoch -1, state `pending` at first).
/// Returns 2 per job: the job id (the earlier one for a repeated key) and 1 if new, 0 if not.
pub static PUSH: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix = KEYS[1], ARGV[1]
local now, idem_ttl, n = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local ready = 0
local i = 5
for _ = 1, n do
  local id, kind, tenant, payload = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local max, run_at, idem = ARGV[i + 4], tonumber(ARGV[i + 5]), ARGV[i + 6]
  local preset, on_fail, group, trace = ARGV[i + 7], ARGV[i + 8], ARGV[i + 9], ARGV[i + 10]
  local ndeps = tonumber(ARGV[i + 11])
  local first_dep = i + 12
  i = i + 12 + ndeps
  local earlier = false
  if idem ~= '' then
    local ik = prefix .. ':idem:' .. idem
    earlier = redis.call('GET', ik)
    if not earlier then redis.call('SET', ik, id, 'PX', idem_ttl) end
  end
  if earlier then
    out[#out + 1] = earlier
    out[#out + 1] = 0
  else
    local jk = prefix .. ':job:' .. id
    if preset == '1' and redis.call('EXISTS', prefix .. ':children:' .. id) == 1 then
      redis.call('HSET', jk, 'children', 1)
    end
    if group ~= '' then redis.call('HSET', jk, 'group', group) end
    -- The trace travels in the job's one HSET (nothing when traces are off).
    local traced = {}
    if trace ~= '' then traced = {'trace', trace} end
    -- One HSET per job. A job due now waits in its tenant's ready list; the fetch moves it into
    -- the stream (see `fill`).
    if ndeps > 0 then
      local pk = prefix .. ':parents:' .. id
      for d = first_dep, first_dep + ndeps - 1 do redis.call('HSET', pk, ARGV[d], '-1:pending') end
      -- A parent named twice counts once.
      local distinct = redis.call('HLEN', pk)
      redis.call('HSET', jk, 'kind', kind, 'tenant', tenant, 'payload', payload, 'attempts', 0,
        'max_attempts', max, 'created_at', now, 'idem', idem, 'status', 'waiting',
        'deps', distinct, 'deps_left', distinct, 'deps_failed', 0, 'on_fail', on_fail, unpack(traced))
      if run_at > 0 then redis.call('HSET', jk, 'run_at', run_at) end
      redis.call('ZADD', prefix .. ':held', now, id)
      redis.call('ZADD', prefix .. ':linking', now, id)
    elseif run_at > now then
      redis.call('HSET', jk, 'kind', kind, 'tenant', tenant, 'payload', payload, 'attempts', 0,
        'max_attempts', max, 'created_at', now, 'idem', idem, 'status', 'scheduled', 'run_at', run_at,
        unpack(traced))
      redis.call('ZADD', prefix .. ':scheduled', run_at, id)
    else
      redis.call('HSET', jk, 'kind', kind, 'tenant', tenant, 'payload', payload, 'attempts', 0,
        'max_attempts', max, 'created_at', now, 'idem', idem, 'status', 'queued', unpack(traced))
      make_ready(prefix, id, tenant, false)
      ready = ready + 1
    end
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
readied(prefix, ready)
return out
"#,
    )
});

/// Takes up to `count` new jobs for a consumer, a fair share from each tenant with jobs waiting
/// (`fill`). ARGV: prefix, group, consumer, count, now, dead_ttl. Returns `{'paused'}`,
/// `{'empty', last_wake_id}` (for a blocking wait on the wake-up stream that cannot miss a job
/// made ready meanwhile), or `{'ok', ...9 per job}`.
pub static FETCH: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local count, now, dead_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if redis.call('EXISTS', prefix .. ':paused') == 1 then return {'paused'} end
local out = {'ok'}
-- Delivers up to n undelivered stream entries to the consumer; returns how many it read.
local function deliver(n)
  local function read()
    return redis.pcall('XREADGROUP', 'GROUP', group, consumer, 'COUNT', n, 'STREAMS', stream, '>')
  end
  local res = read()
  if type(res) == 'table' and res.err then
    -- A Redis that lost its data (restarted without persistence, flushed) lost the group too:
    -- create it again rather than fail every fetch.
    if not string.find(res.err, 'NOGROUP', 1, true) then error(res.err) end
    redis.call('XGROUP', 'CREATE', stream, group, '0', 'MKSTREAM')
    res = read()
  end
  if not res then return 0 end
  for _, e in ipairs(res[1][2]) do
    take(prefix, stream, group, consumer, now, dead_ttl, e[1], e[2][2], out)
  end
  return #res[1][2]
end
-- Entries already in the stream come first (none, unless an older version pushed them or a
-- fetch failed halfway), then a fair share of each waiting tenant's jobs, moved into the stream
-- and delivered at once.
local got = deliver(count)
if got < count then
  local moved = fill(prefix, stream, count - got, now)
  if moved > 0 then got = got + deliver(moved) end
end
-- Even if every entry read was dropped (cancelled jobs), there may be more: fetch again.
if got > 0 then return out end
local woken = redis.call('XREVRANGE', prefix .. ':wake', '+', '-', 'COUNT', 1)
if woken[1] then return {'empty', woken[1][1]} end
return {'empty', '0-0'}
"#,
    )
});

/// Takes over jobs whose lease expired (their worker died or stalled). ARGV: prefix, group,
/// consumer, now, lease_ms, count, dead_ttl, cursor, stale_ms. Returns
/// `{next_cursor, ...9 per job}`. Also forgets consumers silent for `stale_ms` that hold nothing.
pub static RECLAIM: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local now, lease, count, dead_ttl = tonumber(ARGV[4]), ARGV[5], ARGV[6], tonumber(ARGV[7])
local cursor, stale = ARGV[8], tonumber(ARGV[9])
local r = redis.call('XAUTOCLAIM', stream, group, consumer, lease, cursor, 'COUNT', count)
local out = {r[1]}
for _, e in ipairs(r[2]) do
  if e and e[2] then take(prefix, stream, group, consumer, now, dead_ttl, e[1], e[2][2], out) end
end
local workers = prefix .. ':workers'
for _, c in ipairs(redis.call('ZRANGEBYSCORE', workers, '-inf', now - stale, 'LIMIT', 0, 20)) do
  if #redis.call('XPENDING', stream, group, '-', '+', 1, c) == 0 then
    redis.call('XGROUP', 'DELCONSUMER', stream, group, c)
    redis.call('ZREM', workers, c)
  end
end
return out
"#,
    )
});

/// Takes over the jobs of a worker known to be dead (a process of this machine that is gone),
/// without waiting for their leases to expire. ARGV: prefix, group, consumer, now, dead_ttl,
/// dead_consumer, count. Returns 9 per job, as `RECLAIM`; forgets the dead consumer once it
/// holds nothing.
pub static TAKE_OVER: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local now, dead_ttl, dead, count = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local out = {}
local pending = redis.call('XPENDING', stream, group, '-', '+', count, dead)
for _, p in ipairs(pending) do
  local claimed = redis.call('XCLAIM', stream, group, consumer, 0, p[1])
  local e = claimed[1]
  if e and e[2] then
    take(prefix, stream, group, consumer, now, dead_ttl, e[1], e[2][2], out)
  elseif e then
    redis.call('XACK', stream, group, e[1])
  end
end
if #redis.call('XPENDING', stream, group, '-', '+', 1, dead) == 0 then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, dead)
  redis.call('ZREM', prefix .. ':workers', dead)
end
return out
"#,
    )
});

/// Keeps a live worker's leases fresh and records its heartbeat. ARGV: prefix, group,
/// consumer, now, worker_ttl_ms, info_json, then 2 per held job: id, entry. Returns, for each job
/// the worker no longer owns, its id and who holds it now: another worker's name when it was
/// reclaimed, or "" when no worker does (it finished, often by this worker's own ack that crossed
/// the heartbeat, or Redis no longer has it).
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local now, ttl, info = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]
local lost, keep = {}, {}
for i = 7, #ARGV, 2 do
  local id, entry = ARGV[i], ARGV[i + 1]
  local h = redis.call('HMGET', prefix .. ':job:' .. id, 'worker', 'entry')
  if h[1] == consumer and h[2] == entry then
    keep[#keep + 1] = entry
  else
    lost[#lost + 1] = id
    lost[#lost + 1] = h[1] or ''
  end
end
for c = 1, #keep, 200 do
  local args = {stream, group, consumer, 0}
  for k = c, math.min(c + 199, #keep) do args[#args + 1] = keep[k] end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
redis.call('ZADD', prefix .. ':workers', now, consumer)
local wk = prefix .. ':worker:' .. consumer
redis.call('SET', wk, info, 'PX', ttl)
return lost
"#,
    )
});

/// Records outcomes and acknowledges their entries. ARGV: prefix, group, consumer, now,
/// succeeded_ttl, dead_ttl, minute, count, then 5 per job: id, entry, outcome ('succeeded',
/// 'retry', 'failed', 'dead'), data (result JSON or error text), retry_at. Outcomes for jobs the
/// consumer no longer owns are ignored: the worker that reclaimed them reports instead.
/// Returns the number of outcomes recorded, then the ids of the finished jobs that other jobs
/// wait for or that belong to a group.
pub static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local now, ok_ttl, dead_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local minute, n = ARGV[7], tonumber(ARGV[8])
local done, failed = 0, 0
local per_tenant, slots = {}, {}
-- Entries to acknowledge and succeeded jobs to index, sent in batched calls at the end (the
-- common path costs four calls per job instead of eight).
local entries, succeeded = {}, {}
-- Jobs that finished with children waiting on them: returned, so the caller tells the children.
local parents = {0}
local i = 9
for _ = 1, n do
  local id, entry, outcome, data, retry_at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  i = i + 5
  local jk = job_key(prefix, id)
  local h = redis.call('HMGET', jk, 'worker', 'entry', 'attempts', 'tenant', 'children', 'deps', 'group')
  if h[1] == consumer and h[2] == entry then
    local field = (h[4] or '') .. (outcome == 'succeeded' and ':succeeded' or ':failed')
    per_tenant[field] = (per_tenant[field] or 0) + 1
    slots[h[4] or ''] = (slots[h[4] or ''] or 0) + 1
    entries[#entries + 1] = entry
    if outcome == 'succeeded' then
      redis.call('HSET', jk, 'result', data, 'status', 'succeeded', 'finished_at', now)
      redis.call('HDEL', jk, 'worker', 'entry')
      redis.call('PEXPIRE', jk, ok_ttl)
      if h[6] then redis.call('PEXPIRE', prefix .. ':parents:' .. id, ok_ttl) end
      if h[5] or h[7] then
        parent_finished(prefix, jk, id, now, ok_ttl)
        parents[#parents + 1] = id
      end
      succeeded[#succeeded + 1] = now
      succeeded[#succeeded + 1] = id
      done = done + 1
    else
      add_error(jk, tonumber(h[3] or '0'), now, data)
      if outcome == 'retry' then
        redis.call('HSET', jk, 'status', 'retrying', 'run_at', retry_at)
        redis.call('HDEL', jk, 'worker', 'entry')
        redis.call('ZADD', prefix .. ':retry', tonumber(retry_at), id)
      elseif finish(prefix, jk, id, outcome, now, dead_ttl) then
        parents[#parents + 1] = id
      end
      failed = failed + 1
    end
  end
end
-- Batched in slices, so no call ever unpacks more than a few hundred arguments.
for j = 1, #entries, 200 do
  local slice = {unpack(entries, j, math.min(j + 199, #entries))}
  redis.call('XACK', stream, group, unpack(slice))
  redis.call('XDEL', stream, unpack(slice))
end
for tenant, k in pairs(slots) do freed(prefix, tenant, k) end
for j = 1, #succeeded, 400 do
  redis.call('ZADD', prefix .. ':succeeded', unpack(succeeded, j, math.min(j + 399, #succeeded)))
end
local finished_ok = {}
for j = 2, #succeeded, 2 do finished_ok[#finished_ok + 1] = succeeded[j] end
to_history(prefix, finished_ok)
if done + failed > 0 then
  local sk = prefix .. ':stats:' .. minute
  if done > 0 then redis.call('HINCRBY', sk, 'succeeded', done) end
  if failed > 0 then redis.call('HINCRBY', sk, 'failed', failed) end
  redis.call('PEXPIRE', sk, 7200000)
  -- Per tenant and UTC day, for the dashboard's tenant list (kept eight days).
  local tk = prefix .. ':tenantstats:' .. math.floor(tonumber(minute) / 1440)
  for field, count in pairs(per_tenant) do redis.call('HINCRBY', tk, field, count) end
  redis.call('PEXPIRE', tk, 691200000)
end
parents[1] = done + failed
return parents
"#,
    )
});

/// Hands jobs a stopping worker fetched but never started back to the queue, unchanged: each
/// goes back to the front of its tenant's ready list, in the order given. ARGV: prefix, group,
/// consumer, then 2 per job: id, entry.
pub static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, group, consumer = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
local released = 0
for i = #ARGV - 1, 4, -2 do
  local id, entry = ARGV[i], ARGV[i + 1]
  local jk = job_key(prefix, id)
  local h = redis.call('HMGET', jk, 'worker', 'entry', 'attempts', 'tenant')
  if h[1] == consumer and h[2] == entry then
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    redis.call('HSET', jk, 'status', 'queued', 'attempts', math.max(0, tonumber(h[3]) - 1))
    redis.call('HDEL', jk, 'worker', 'started_at', 'entry')
    freed(prefix, h[4] or '', 1)
    make_ready(prefix, id, h[4] or '', true)
    released = released + 1
  end
end
readied(prefix, released)
return released
"#,
    )
});

/// Moves due scheduled and retrying jobs into the stream. ARGV: prefix, now, limit.
/// Returns how many moved (call again while it returns `limit`).
pub static PROMOTE: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, now, limit = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local moved, ready = 0, 0
for _, set in ipairs({'scheduled', 'retry'}) do
  local key = prefix .. ':' .. set
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, limit)) do
    local jk = job_key(prefix, id)
    local h = redis.call('HMGET', jk, 'status', 'tenant')
    if h[1] == 'scheduled' or h[1] == 'retrying' then
      redis.call('HSET', jk, 'status', 'queued')
      make_ready(prefix, id, h[2] or '', false)
      ready = ready + 1
    end
    redis.call('ZREM', key, id)
    moved = moved + 1
  end
end
readied(prefix, ready)
-- Tenants slowed by their rate whose next job may start: fetchers waiting are woken for them.
if unslow(prefix, tonumber(now)) > 0 then wake(prefix, 1) end
return moved
"#,
    )
});

/// Puts dead, failed or cancelled jobs back in the queue (a cancelled job waiting for parents
/// runs now: the admin's call) with a fresh attempt budget (history kept).
/// ARGV: prefix, now, then job ids. Returns one status per id: 'retried' when re-queued,
/// otherwise the job's status ('missing' if it does not exist).
pub static RETRY: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix = KEYS[1], ARGV[1]
local out = {}
local ready = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local jk = job_key(prefix, id)
  local h = redis.call('HMGET', jk, 'status', 'tenant')
  local status = h[1]
  if status == 'dead' or status == 'failed' or status == 'cancelled' then
    redis.call('ZREM', prefix .. ':' .. status, id)
    redis.call('PERSIST', jk)
    redis.call('PERSIST', prefix .. ':children:' .. id)
    redis.call('PERSIST', prefix .. ':parents:' .. id)
    redis.call('HSET', jk, 'status', 'queued', 'attempts', 0)
    redis.call('HDEL', jk, 'finished_at', 'run_at', 'entry')
    make_ready(prefix, id, h[2] or '', false)
    ready = ready + 1
    out[#out + 1] = 'retried'
  else
    out[#out + 1] = status or 'missing'
  end
end
readied(prefix, ready)
return out
"#,
    )
});

/// Deletes a job that is not running. ARGV: prefix, id, now. Returns 'deleted', 'running' (refused)
/// or 'missing'.
pub static DISCARD: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, id = KEYS[1], ARGV[1], ARGV[2]
local jk = job_key(prefix, id)
local h = redis.call('HMGET', jk, 'status', 'entry', 'tenant', 'children')
if not h[1] then return 'missing' end
if h[1] == 'running' then return 'running' end
if h[1] == 'queued' then unready(prefix, stream, id, h[3], h[2]) end
for _, set in ipairs({'scheduled', 'retry', 'succeeded', 'failed', 'dead', 'cancelled', 'held', 'linking'}) do
  redis.call('ZREM', prefix .. ':' .. set, id)
end
redis.call('DEL', jk, prefix .. ':parents:' .. id)
-- Jobs waiting for this one are told it is gone (as a failed parent).
if h[4] then redis.call('ZADD', prefix .. ':settle', ARGV[3], id) end
return 'deleted'
"#,
    )
});

/// Cancels a job that has not started: it ends as `failed` with the reason. ARGV: prefix, id,
/// now, reason, dead_ttl. Returns 'cancelled', the job's status when it cannot be cancelled,
/// or 'missing'.
pub static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, id, now, reason, ttl = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local jk = job_key(prefix, id)
local h = redis.call('HMGET', jk, 'status', 'entry', 'attempts', 'tenant')
if not h[1] then return 'missing' end
if h[1] ~= 'queued' and h[1] ~= 'scheduled' and h[1] ~= 'retrying' and h[1] ~= 'waiting' then return h[1] end
if h[1] == 'queued' then unready(prefix, stream, id, h[4], h[2]) end
redis.call('ZREM', prefix .. ':scheduled', id)
redis.call('ZREM', prefix .. ':retry', id)
redis.call('ZREM', prefix .. ':held', id)
redis.call('ZREM', prefix .. ':linking', id)
add_error(jk, tonumber(h[3] or '0'), now, reason)
finish(prefix, jk, id, 'failed', now, ttl)
return 'cancelled'
"#,
    )
});

/// Drops up to `limit` finished jobs older than `cutoff` from one finished set, deleting their
/// hashes too: memory then does not wait for Redis to notice expired keys, which it finds by
/// sampling and can be slow to do among many long-lived keys. ARGV: prefix, set name, cutoff,
/// limit. Returns how many were dropped.
pub static TRIM: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local prefix, set, cutoff, limit = ARGV[1], ARGV[1] .. ':' .. ARGV[2], ARGV[3], tonumber(ARGV[4])
local ids = redis.call('ZRANGEBYSCORE', set, '-inf', cutoff, 'LIMIT', 0, limit)
if #ids == 0 then return 0 end
local keys = {}
for k, id in ipairs(ids) do keys[k] = job_key(prefix, id) end
redis.call('UNLINK', unpack(keys))
redis.call('ZREM', set, unpack(ids))
return #ids
"#,
    )
});

/// Sets one tenant's limit, rate and pause on a queue and puts the tenant where the new rule
/// says (in the ring, parked or slowed). ARGV: prefix, tenant ('*' for the queue's defaults),
/// paused ('1', '0', or '' to leave it), limit and rate (a number, '-' for the default, '' to
/// leave it).
pub static TENANT_CONTROL: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix, tenant, paused, limit = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local rate = ARGV[5] or ''
if limit == '-' then redis.call('HDEL', prefix .. ':limits', tenant)
elseif limit ~= '' then redis.call('HSET', prefix .. ':limits', tenant, limit) end
local old_rate = redis.call('HGET', prefix .. ':rates', tenant)
if rate == '-' then redis.call('HDEL', prefix .. ':rates', tenant)
elseif rate ~= '' then redis.call('HSET', prefix .. ':rates', tenant, rate) end
-- A new rate counts from now: what the old one allowed is forgotten. (Setting the same rate
-- again, as every `work` process does at start, changes nothing.)
if rate ~= '' and redis.call('HGET', prefix .. ':rates', tenant) ~= old_rate then
  if tenant == '*' then redis.call('DEL', prefix .. ':tat') else redis.call('HDEL', prefix .. ':tat', tenant) end
else
  rate = ''
end
if paused == '1' then redis.call('SADD', prefix .. ':tpaused', tenant)
elseif paused == '0' then redis.call('SREM', prefix .. ':tpaused', tenant) end
-- The defaults change every parked (and, for a rate, slowed) tenant's rule; both sets are
-- small: tenants with jobs waiting that may not run now.
local tenants = {tenant}
if tenant == '*' then
  tenants = redis.call('SMEMBERS', prefix .. ':parked')
  if rate ~= '' then
    for _, t in ipairs(redis.call('ZRANGE', prefix .. ':slowed', 0, -1)) do tenants[#tenants + 1] = t end
  end
end
for _, t in ipairs(tenants) do
  if redis.call('LLEN', prefix .. ':ready:' .. t) > 0 then
    if not eligible(prefix, t) then
      -- Out of the ring: O(ring), for an admin action.
      if redis.call('SADD', prefix .. ':parked', t) == 1 then
        redis.call('LREM', prefix .. ':ring', 0, t)
        redis.call('ZREM', prefix .. ':slowed', t)
      end
    elseif redis.call('SREM', prefix .. ':parked', t) == 1 then
      redis.call('RPUSH', prefix .. ':ring', t)
      wake(prefix, 1)
    elseif rate ~= '' and redis.call('ZREM', prefix .. ':slowed', t) == 1 then
      redis.call('RPUSH', prefix .. ':ring', t)
      wake(prefix, 1)
    end
  end
end
return 1
"#,
    )
});

/// Records edges in the parents' queue (every parent here is of this queue). ARGV: prefix, mode
/// ('strict': a parent that does not exist is reported `missing`; 'lenient': its children list
/// is started anyway, for a parent the outbox has yet to push with a preset id), then 2 per
/// edge: parent id, child id. Returns 2 per edge: the parent's state for the child ('pending',
/// 'ok', 'failed', 'missing') and its epoch.
pub static LINK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, prefix, mode = KEYS[1], ARGV[1], ARGV[2]
local out = {}
for i = 3, #ARGV, 2 do
  local parent, child = ARGV[i], ARGV[i + 1]
  local jk = prefix .. ':job:' .. parent
  local ck = prefix .. ':children:' .. parent
  local h = redis.call('HMGET', jk, 'status', 'settles')
  local status = h[1]
  if not status and mode == 'strict' then
    out[#out + 1] = 'missing'
    out[#out + 1] = 0
  else
    redis.call('RPUSH', ck, child)
    if status then redis.call('HSET', jk, 'children', 1) end
    local state = 'pending'
    if status == 'succeeded' then state = 'ok'
    elseif status == 'failed' or status == 'dead' or status == 'cancelled' then state = 'failed' end
    if state ~= 'pending' then
      -- Finished already: its children list lives as long as it does.
      local ttl = redis.call('PTTL', jk)
      if ttl > 0 then redis.call('PEXPIRE', ck, ttl) end
    end
    out[#out + 1] = state
    out[#out + 1] = tonumber(h[2] or '0')
  end
end
return out
"#,
    )
});

/// Tells children (all of this queue) how a parent ended. ARGV: prefix, now, dead_ttl, then 4 per
/// edge: child id, parent id, epoch, state ('ok' or 'failed'). An edge is applied only when its
/// epoch is newer than the one recorded (repeats and late arrivals change nothing). A waiting
/// child whose parents all succeeded becomes ready (or scheduled); one with a failed parent is
/// cancelled, unless pushed to run anyway, and comes back to waiting if that parent is retried
/// and succeeds. Returns the number made ready, then the ids of cancelled children that have
/// children of their own (to be told in turn).
pub static DEP_SETTLE: LazyLock<Script> = LazyLock::new(|| {
    with_common(
        r#"
local stream, prefix = KEYS[1], ARGV[1]
local now, dead_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local ready = 0
local out = {0}
for i = 4, #ARGV, 4 do
  local child, parent, epoch, state = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local jk = job_key(prefix, child)
  local pk = prefix .. ':parents:' .. child
  local prev = redis.call('HGET', pk, parent)
  local h = redis.call('HMGET', jk, 'status', 'tenant', 'deps_left', 'deps_failed', 'on_fail', 'dep_cancelled', 'run_at', 'attempts')
  if h[1] and prev then
    local sep = string.find(prev, ':', 1, true)
    local prev_epoch, prev_state = tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)
    if epoch > prev_epoch then
      redis.call('HSET', pk, parent, epoch .. ':' .. state)
      local left, failed = tonumber(h[3] or '0'), tonumber(h[4] or '0')
      if prev_state == 'ok' then left = left + 1 end
      if state == 'ok' then left = left - 1 end
      if prev_state == 'failed' then failed = failed - 1 end
      if state == 'failed' then failed = failed + 1 end
      redis.call('HSET', jk, 'deps_left', left, 'deps_failed', failed)
      local status = h[1]
      if status == 'cancelled' and h[6] == '1' and failed == 0 then
        -- The failed parent was retried and succeeded: wait again.
        redis.call('ZREM', prefix .. ':cancelled', child)
        redis.call('PERSIST', jk)
        redis.call('PERSIST', pk)
        redis.call('PERSIST', prefix .. ':children:' .. child)
        redis.call('HSET', jk, 'status', 'waiting')
        redis.call('HDEL', jk, 'finished_at', 'dep_cancelled')
        redis.call('ZADD', prefix .. ':held', now, child)
        status = 'waiting'
      end
      if status == 'waiting' then
        local run_anyway = h[5] == 'run'
        if failed > 0 and not run_anyway then
          redis.call('ZREM', prefix .. ':held', child)
          redis.call('HSET', jk, 'dep_cancelled', 1)
          add_error(jk, tonumber(h[8] or '0'), now, 'cancelled: parent ' .. parent .. ' did not succeed')
          if finish(prefix, jk, child, 'cancelled', now, dead_ttl) then out[#out + 1] = child end
        elseif left - failed == 0 then
          redis.call('ZREM', prefix .. ':held', child)
          local run_at = tonumber(h[7] or '0')
          if run_at > now then
            redis.call('HSET', jk, 'status', 'scheduled')
            redis.call('ZADD', prefix .. ':scheduled', run_at, child)
          else
            redis.call('HSET', jk, 'status', 'queued')
            make_ready(prefix, child, h[2] or '', false)
            ready = ready + 1
          end
        end
      end
    end
  end
end
readied(prefix, ready)
out[1] = ready
return out
"#,
    )
});

/// Forgets a parent from `:settle` once its children were told, unless it finished again since
/// (its score is then newer). ARGV: prefix, id, score.
pub static SETTLED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local stream, prefix, id, score = KEYS[1], ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = redis.call('ZSCORE', prefix .. ':settle', id)
if now and tonumber(now) == score then redis.call('ZREM', prefix .. ':settle', id) end
return 1
"#,
    )
});

/// What a group's scripts share: `check` decides, after any change, whether the group has
/// completed (every member finished), records its state once it has (with the retention of a
/// job that ended the same way), and says whether its follow-up is still to be pushed and its
/// completion still to be announced (see `GroupHook`). Returns {state, the follow-up when it is
/// due ('' otherwise), announcement due (1/0)}.
const GROUP_COMMON: &str = r#"
local function n(v) return tonumber(v or '0') or 0 end
local function check(prefix, now, ok_ttl, dead_ttl)
  local mk = prefix .. ':meta'
  local h = redis.call('HMGET', mk, 'total', 'succeeded', 'failed', 'dead', 'cancelled',
    'discarded', 'state', 'follow_up', 'followed', 'announced')
  if not h[1] then return {'opening', '', 0} end
  local bad = n(h[3]) + n(h[4]) + n(h[5]) + n(h[6])
  if n(h[2]) + bad < n(h[1]) then return {h[7] or 'running', '', 0} end
  local state = bad == 0 and 'succeeded' or 'completed_with_failures'
  if h[7] ~= state then
    redis.call('HSET', mk, 'state', state)
    redis.call('HSETNX', mk, 'finished_at', now)
    local ttl = bad == 0 and ok_ttl or dead_ttl
    redis.call('PEXPIRE', mk, ttl)
    redis.call('PEXPIRE', prefix .. ':members', ttl)
  end
  local follow_up = (h[8] and not h[9]) and h[8] or ''
  return {state, follow_up, h[10] and 0 or 1}
end
"#;

fn with_group_common(body: &str) -> Script {
    Script::new(&format!("{GROUP_COMMON}\n{body}"))
}

/// Opens a group (repeats change nothing). KEYS: the group's meta key. ARGV: prefix, tenant,
/// total, now, succeeded ttl, failed ttl, follow-up ('' = none). Members may finish before it
/// opens: their outcomes wait in the counters. Returns as `check`.
pub static GROUP_OPEN: LazyLock<Script> = LazyLock::new(|| {
    with_group_common(
        r#"
local prefix, now = ARGV[1], tonumber(ARGV[4])
local mk = prefix .. ':meta'
if redis.call('HSETNX', mk, 'total', ARGV[3]) == 1 then
  redis.call('HSET', mk, 'tenant', ARGV[2], 'created_at', now)
  if ARGV[7] ~= '' then redis.call('HSET', mk, 'follow_up', ARGV[7]) end
end
return check(prefix, now, tonumber(ARGV[5]), tonumber(ARGV[6]))
"#,
    )
});

/// Records how a member ended. KEYS: the group's meta key. ARGV: prefix, job id, epoch,
/// outcome ('succeeded', 'failed', 'dead', 'cancelled', 'discarded'), now, succeeded ttl,
/// failed ttl. Applied only when the epoch is newer than the member's last one (a repeat counts
/// once; a member retried by an admin moves from its old outcome to its new one). Returns as
/// `check`.
pub static GROUP_NOTE: LazyLock<Script> = LazyLock::new(|| {
    with_group_common(
        r#"
local prefix, id, epoch, outcome = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = tonumber(ARGV[5])
local members, mk = prefix .. ':members', prefix .. ':meta'
local prev = redis.call('HGET', members, id)
local prev_epoch, prev_outcome = -1, nil
if prev then
  local sep = string.find(prev, ':', 1, true)
  prev_epoch, prev_outcome = tonumber(string.sub(prev, 1, sep - 1)), string.sub(prev, sep + 1)
end
if epoch > prev_epoch then
  redis.call('HSET', members, id, epoch .. ':' .. outcome)
  if prev_outcome then redis.call('HINCRBY', mk, prev_outcome, -1) end
  redis.call('HINCRBY', mk, outcome, 1)
end
return check(prefix, now, tonumber(ARGV[6]), tonumber(ARGV[7]))
"#,
    )
});

/// Marks a step of a group's completion done: `followed` (the follow-up's job id) or
/// `announced`. KEYS: meta key. ARGV: field, value.
pub static GROUP_MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// Drops the first `n` ids of a queue's history list, if this copier still holds the lease and
/// the list still starts with the id it read first (so a copier that lost its lease can never
/// drop ids it did not copy). KEYS: stream. ARGV: prefix, owner, n, first id. Returns 1 if
/// dropped.
pub static HISTORY_TRIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local prefix, owner, n, first = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
if redis.call('GET', prefix .. ':history:lock') ~= owner then return 0 end
if redis.call('LINDEX', prefix .. ':history', 0) ~= first then return 0 end
redis.call('LTRIM', prefix .. ':history', n, -1)
return 1
"#,
    )
});

/// Takes or keeps the lease on copying a queue's history. KEYS: stream. ARGV: prefix, owner,
/// lease ms. Returns 1 if `owner` holds it now.
pub static HISTORY_LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local prefix, owner, ms = ARGV[1], ARGV[2], tonumber(ARGV[3])
local lock = prefix .. ':history:lock'
local holder = redis.call('GET', lock)
if holder == false or holder == owner then
  redis.call('SET', lock, owner, 'PX', ms)
  return 1
end
return 0
"#,
    )
});
