-- Rebuilding Redis's copy of the open service windows reads the customers' messages of the last
-- 72 hours; this keeps that read off the rest of the table.
CREATE INDEX inbound_messages_occurred ON inbound_messages (occurred_at);
