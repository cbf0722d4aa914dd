-- no-transaction
-- See 0011: has recipient R written to sender S.
CREATE INDEX CONCURRENTLY IF NOT EXISTS inbound_messages_recipient_sender
    ON inbound_messages (recipient, sender);
