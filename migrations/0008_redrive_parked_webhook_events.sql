-- Webhook events are no longer parked after ten failures: they are retried with backoff until
-- they are processed (a STOP or a status in one must be applied in the end). Those parked before
-- go back to the queue.
UPDATE webhook_events SET state = 'pending', claimed_until = NULL WHERE state = 'failed';
