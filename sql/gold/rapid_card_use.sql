-- Fraud-like pattern: five or more card transactions by one customer within ten
-- minutes. One row per customer and burst (the transaction that completes it).
WITH t AS (
    SELECT customer_id,
           txn_id,
           CAST(event_time AS TIMESTAMP) AS ts,
           amount_gbp
    FROM bronze.card_transactions
),
-- Customers with a burst: five transactions within ten minutes means that, for the last
-- of them, the transaction four before it is no older than ten minutes. (A cheap
-- first pass: the exact windows below are computed for these customers only.)
bursting AS (
    SELECT DISTINCT customer_id
    FROM (SELECT customer_id,
                 ts,
                 lag(ts, 4) OVER (PARTITION BY customer_id ORDER BY ts) AS four_before
          FROM t)
    WHERE four_before >= ts - INTERVAL '10 minutes'
),
w AS (
    SELECT customer_id,
           txn_id,
           ts,
           count(*) OVER (PARTITION BY customer_id ORDER BY ts
                          RANGE BETWEEN INTERVAL '10 minutes' PRECEDING AND CURRENT ROW) AS in_window,
           sum(amount_gbp) OVER (PARTITION BY customer_id ORDER BY ts
                          RANGE BETWEEN INTERVAL '10 minutes' PRECEDING AND CURRENT ROW) AS window_gbp
    FROM t
    WHERE customer_id IN (SELECT customer_id FROM bursting)
)
SELECT customer_id, txn_id, ts AS burst_at, in_window AS transactions_in_10_min,
       CAST(round(window_gbp, 2) AS DECIMAL(14, 2)) AS amount_gbp
FROM w
WHERE in_window >= 5
