-- no-transaction
-- A key limited to some senders reads and writes the consent of the people those senders have
-- talked to: this index and the next answer "has sender S messaged, or heard from, recipient R".
-- Built concurrently (one statement per migration: several would run as one transaction).
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_recipient_sender ON messages (recipient, sender);
