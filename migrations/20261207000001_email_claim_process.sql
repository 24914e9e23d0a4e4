-- The worker process holding an email's send claim (`<boot id>/<consumer>`), so that a later
-- delivery of the same job can tell a holder that died on this machine (its claim goes at once)
-- from one that may only be frozen (its claim must lapse first).
ALTER TABLE emails ADD COLUMN claim_process text;
