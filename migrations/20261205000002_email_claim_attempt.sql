-- Which delivery of an email's job holds the send claim (`sending_until`). A later delivery of
-- the same job (after its worker stalled past the lease, possibly between the SMTP server's 250
-- and any record of it) waits for the claim to lapse instead of sending again at once.
ALTER TABLE emails ADD COLUMN claim_attempt integer;
