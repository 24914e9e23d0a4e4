-- Products, the stock ledger, daily sales history and the transactional outbox.

CREATE TABLE products (
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sku              text NOT NULL,
    name             text NOT NULL,
    unit_price       numeric(20, 4) NOT NULL CHECK (unit_price >= 0),
    currency         char(3) NOT NULL,
    reorder_point    bigint NOT NULL CHECK (reorder_point >= 0),
    reorder_quantity bigint NOT NULL CHECK (reorder_quantity >= 0),
    lead_time_days   integer NOT NULL CHECK (lead_time_days >= 0),
    allow_negative   boolean NOT NULL DEFAULT false,
    on_hand          bigint NOT NULL DEFAULT 0,
    -- Whether on_hand is below reorder_point: a low-stock alert fires when this turns true.
    below_reorder    boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT products_pkey PRIMARY KEY (tenant_id, sku)
);

CREATE TABLE stock_movements (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    sku             text NOT NULL,
    delta           bigint NOT NULL CHECK (delta <> 0),
    reason          text NOT NULL CHECK (reason IN ('sale', 'receipt', 'return', 'correction', 'damage', 'transfer')),
    reference       text,
    idempotency_key text NOT NULL,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    on_hand_after   bigint NOT NULL,
    job_id          text NOT NULL,
    CONSTRAINT stock_movements_product_fkey FOREIGN KEY (tenant_id, sku)
        REFERENCES products (tenant_id, sku) ON DELETE CASCADE,
    CONSTRAINT stock_movements_idempotency_key UNIQUE (tenant_id, idempotency_key)
);

CREATE INDEX stock_movements_by_product ON stock_movements (tenant_id, sku, id DESC);

-- Units sold per product and day; `source` keeps ledger sales and imported history apart so
-- that neither overwrites the other.
CREATE TABLE daily_sales (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    sku       text NOT NULL,
    day       date NOT NULL,
    source    text NOT NULL CHECK (source IN ('ledger', 'import')),
    quantity  bigint NOT NULL,
    CONSTRAINT daily_sales_pkey PRIMARY KEY (tenant_id, sku, day, source)
);

-- Work decided inside a database transaction, moved to the Redis queues by the outbox relay
-- once the transaction commits, so committed work is never lost and uncommitted work never runs.
CREATE TABLE outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid REFERENCES tenants (id) ON DELETE CASCADE,
    queue           text NOT NULL,
    kind            text NOT NULL,
    payload         jsonb NOT NULL,
    max_attempts    integer NOT NULL,
    idempotency_key text NOT NULL,
    job_id          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz
);

CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
