-- no-transaction
-- Messages whose body is still kept, oldest first: what the retention purge walks.
CREATE INDEX CONCURRENTLY IF NOT EXISTS messages_body_kept ON messages (created_at) WHERE body IS NOT NULL;
