-- What a campaign was estimated to cost and what it has been billed so far, as counts by recipient
-- country and category (priced in the application from the rate card, so a new card reprices
-- them): `planned` rows are written with each planning chunk, `billed` rows when Meta reports a
-- billable template delivered (or read: `read` may arrive without `delivered`).
ALTER TABLE messages ADD COLUMN country TEXT;

CREATE TABLE campaign_costs (
    campaign_id UUID NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('planned', 'billed')),
    country     TEXT NOT NULL,
    category    TEXT NOT NULL,
    n           BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, kind, country, category)
);

-- The counters of 0003, plus the billed counts in the same statement-level run.
CREATE OR REPLACE FUNCTION campaign_counts_on_update() RETURNS trigger AS $$
BEGIN
    INSERT INTO campaign_counts AS cc (campaign_id, status, detail, n)
    SELECT campaign_id, status, detail, sum(d) FROM (
        SELECT n.campaign_id, n.status,
               campaign_count_detail(n.status, n.status_reason, n.last_error_code) AS detail, 1 AS d
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.campaign_id IS NOT NULL
          AND (n.status, campaign_count_detail(n.status, n.status_reason, n.last_error_code))
              IS DISTINCT FROM (o.status, campaign_count_detail(o.status, o.status_reason, o.last_error_code))
        UNION ALL
        SELECT o.campaign_id, o.status,
               campaign_count_detail(o.status, o.status_reason, o.last_error_code), -1
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE o.campaign_id IS NOT NULL
          AND (n.status, campaign_count_detail(n.status, n.status_reason, n.last_error_code))
              IS DISTINCT FROM (o.status, campaign_count_detail(o.status, o.status_reason, o.last_error_code))
        UNION ALL
        SELECT n.campaign_id, 'replied', '', 1
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.campaign_id IS NOT NULL AND n.replied_at IS NOT NULL AND o.replied_at IS NULL
    ) deltas
    GROUP BY 1, 2, 3 HAVING sum(d) <> 0 ORDER BY 1, 2, 3
    ON CONFLICT (campaign_id, status, detail) DO UPDATE SET n = cc.n + excluded.n;

    INSERT INTO campaign_costs AS k (campaign_id, kind, country, category, n)
    SELECT n.campaign_id, 'billed', n.country, COALESCE(n.pricing_category, n.category), count(*)
    FROM new_rows n JOIN old_rows o ON o.id = n.id
    WHERE n.campaign_id IS NOT NULL AND n.country IS NOT NULL
      AND n.billable IS TRUE AND (n.delivered_at IS NOT NULL OR n.read_at IS NOT NULL)
      AND NOT (o.billable IS TRUE AND (o.delivered_at IS NOT NULL OR o.read_at IS NOT NULL))
    GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4
    ON CONFLICT (campaign_id, kind, country, category) DO UPDATE SET n = k.n + excluded.n;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;
