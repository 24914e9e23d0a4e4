-- Sales history imports, forecast runs and their per-SKU results.

-- An uploaded sales CSV waits here (committed together with its outbox job) until the imports
-- worker validates and loads it; the row-level report stays for the tenant to read.
CREATE TABLE sales_imports (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    body        bytea NOT NULL,
    body_sha256 text NOT NULL,
    status      text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'loaded', 'failed')),
    report      jsonb,
    job_id      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    loaded_at   timestamptz
);

CREATE INDEX sales_imports_by_tenant ON sales_imports (tenant_id, created_at DESC);

-- One forecast run of one tenant. A nightly run carries its night, and (tenant_id, night) is
-- unique: however many schedulers fire, a tenant gets one run per night.
CREATE TABLE forecast_runs (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    trigger       text NOT NULL CHECK (trigger IN ('api', 'schedule', 'cli')),
    night         date,
    horizon_days  integer NOT NULL CHECK (horizon_days BETWEEN 1 AND 365),
    season        integer NOT NULL CHECK (season >= 1),
    -- The last day of sales history the run forecasts from (forecasts start the day after).
    history_end   date NOT NULL,
    skus          text[],
    status        text NOT NULL DEFAULT 'queued' CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    skus_total    integer NOT NULL DEFAULT 0,
    skus_done     integer NOT NULL DEFAULT 0,
    chunks_total  integer NOT NULL DEFAULT 0,
    chunks_done   integer NOT NULL DEFAULT 0,
    -- Shared by every chunk: the global model and the model chooser, trained once per run.
    artifacts     jsonb,
    error         text,
    job_id        text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    CONSTRAINT forecast_runs_one_per_night UNIQUE (tenant_id, night)
);

CREATE INDEX forecast_runs_by_tenant ON forecast_runs (tenant_id, created_at DESC);

-- Chunks done: a chunk delivered twice counts once towards the run's progress.
CREATE TABLE forecast_chunks (
    run_id   uuid NOT NULL REFERENCES forecast_runs (id) ON DELETE CASCADE,
    chunk_no integer NOT NULL,
    skus     integer NOT NULL,
    done_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT forecast_chunks_pkey PRIMARY KEY (run_id, chunk_no)
);

-- One SKU's outcome in a run: the chosen model, every backtest score, the reorder advice.
CREATE TABLE forecast_results (
    run_id            uuid NOT NULL REFERENCES forecast_runs (id) ON DELETE CASCADE,
    tenant_id         uuid NOT NULL,
    sku               text NOT NULL,
    model             text NOT NULL,
    chosen_by         text NOT NULL CHECK (chosen_by IN ('backtest', 'classifier', 'fallback')),
    fallback_reason   text,
    mase              double precision,
    rmsse             double precision,
    smape             double precision,
    scores            jsonb NOT NULL,
    history_days      integer NOT NULL,
    on_hand           bigint NOT NULL,
    reorder_point     bigint NOT NULL,
    order_quantity    bigint NOT NULL,
    stockout_date     date,
    generated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT forecast_results_pkey PRIMARY KEY (run_id, sku)
);

CREATE INDEX forecast_results_by_sku ON forecast_results (tenant_id, sku, generated_at DESC);

-- Forecast points per SKU and day, with the prediction interval.
CREATE TABLE forecast_points (
    run_id  uuid NOT NULL REFERENCES forecast_runs (id) ON DELETE CASCADE,
    sku     text NOT NULL,
    day     date NOT NULL,
    yhat    double precision NOT NULL,
    lower   double precision NOT NULL,
    upper   double precision NOT NULL,
    CONSTRAINT forecast_points_pkey PRIMARY KEY (run_id, sku, day)
);
