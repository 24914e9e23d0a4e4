-- Orders, their lines and invoices. Totals are computed once, in decimal, when the order is
-- recorded; the invoice PDF, the API and the email all show these stored figures.

CREATE TABLE counters (
    tenant_id uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name      text NOT NULL,
    period    integer NOT NULL,
    last      bigint NOT NULL,
    CONSTRAINT counters_pkey PRIMARY KEY (tenant_id, name, period)
);

CREATE TABLE orders (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    order_number     text NOT NULL,
    status           text NOT NULL DEFAULT 'placed',
    customer_name    text NOT NULL,
    customer_email   text NOT NULL,
    customer_address text,
    currency         char(3) NOT NULL,
    tax_rate         numeric(9, 6) NOT NULL CHECK (tax_rate >= 0 AND tax_rate <= 1),
    subtotal         numeric(20, 4) NOT NULL,
    tax              numeric(20, 4) NOT NULL,
    total            numeric(20, 4) NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT orders_order_number_key UNIQUE (tenant_id, order_number)
);

CREATE TABLE order_lines (
    tenant_id   uuid NOT NULL,
    order_id    uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    line_no     integer NOT NULL,
    sku         text NOT NULL,
    description text NOT NULL,
    quantity    bigint NOT NULL CHECK (quantity > 0),
    unit_price  numeric(20, 4) NOT NULL,
    line_total  numeric(20, 4) NOT NULL,
    CONSTRAINT order_lines_pkey PRIMARY KEY (order_id, line_no)
);

CREATE INDEX order_lines_by_tenant ON order_lines (tenant_id, order_id);

CREATE TABLE invoices (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    order_id       uuid NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    -- Assigned by the invoice job, once, from the tenant's gapless yearly counter.
    number         text,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'ready', 'failed')),
    failure_reason text,
    currency       char(3) NOT NULL,
    subtotal       numeric(20, 4) NOT NULL,
    tax            numeric(20, 4) NOT NULL,
    total          numeric(20, 4) NOT NULL,
    issued_on      date,
    pdf            bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    ready_at       timestamptz,
    CONSTRAINT invoices_order_key UNIQUE (order_id),
    CONSTRAINT invoices_number_key UNIQUE (tenant_id, number)
);

CREATE INDEX invoices_by_tenant ON invoices (tenant_id, created_at DESC);
