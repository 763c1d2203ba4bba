-- How customers reach the bank: touchpoints per channel and action, with each
-- channel's share of all touchpoints.
SELECT channel,
       action,
       count(*) AS touchpoints,
       count(DISTINCT customer_id) AS customers,
       CAST(round(100.0 * count(*) / sum(count(*)) OVER (), 2) AS DECIMAL(5, 2)) AS share_pct
FROM bronze.touchpoints
GROUP BY channel, action
