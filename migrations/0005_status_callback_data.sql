-- The `biz_opaque_callback_data` Meta echoes in a status: pregon's message id, so a send whose
-- answer was lost (recorded send_outcome_unknown) can be matched to its status and its wamid.
ALTER TABLE message_statuses ADD COLUMN callback_data text;
CREATE INDEX message_statuses_unapplied_callback ON message_statuses (callback_data)
    WHERE applied_at IS NULL AND callback_data IS NOT NULL;
