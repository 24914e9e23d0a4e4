-- Outbox rows carry their job's id from the start (the relay pushes the job with it), so a row
-- can name another row's job as one it waits for: an order's email waits for its invoice.
ALTER TABLE outbox ADD COLUMN depends_on text[] NOT NULL DEFAULT '{}';
-- A row's job may count in a group of the rows of its transaction (an order's work): the
-- relay opens the group (its size: `group_total`) before pushing the job into it.
ALTER TABLE outbox ADD COLUMN group_id uuid, ADD COLUMN group_total int;
