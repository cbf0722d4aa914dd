-- Exclusions are exported page by page in the order planning recorded them.
ALTER TABLE campaign_exclusions ADD COLUMN seq BIGINT GENERATED ALWAYS AS IDENTITY;
DROP INDEX campaign_exclusions_campaign;
CREATE INDEX campaign_exclusions_campaign ON campaign_exclusions (campaign_id, seq);
