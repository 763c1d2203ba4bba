-- Card spend per day and customer segment (approved transactions only). Incremental:
-- a run recomputes the last day built and the days after it.
-- sluice: key = day, segment
-- sluice: watermark = day
SELECT day,
       segment,
       count(*) AS transactions,
       count(DISTINCT customer_id) AS customers,
       CAST(round(sum(amount_gbp), 2) AS DECIMAL(14, 2)) AS spend_gbp
FROM views.approved_card_spend
GROUP BY day, segment
