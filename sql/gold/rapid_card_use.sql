-- Fraud-like pattern: five or more card transactions by one customer within ten
-- minutes. One row per customer and burst (the transaction that completes it).
WITH t AS (
    SELECT customer_id,
           txn_id,
           CAST(event_time AS TIMESTAMP) AS at,
           amount_gbp
    FROM bronze.card_transactions
),
w AS (
    SELECT customer_id,
           txn_id,
           at,
           count(*) OVER (PARTITION BY customer_id ORDER BY at
                          RANGE BETWEEN INTERVAL '10 minutes' PRECEDING AND CURRENT ROW) AS in_window,
           sum(amount_gbp) OVER (PARTITION BY customer_id ORDER BY at
                          RANGE BETWEEN INTERVAL '10 minutes' PRECEDING AND CURRENT ROW) AS window_gbp
    FROM t
)
SELECT customer_id, txn_id, at AS burst_at, in_window AS transactions_in_10_min,
       CAST(round(window_gbp, 2) AS DECIMAL(14, 2)) AS amount_gbp
FROM w
WHERE in_window >= 5
