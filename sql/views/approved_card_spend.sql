-- Approved card transactions with the day they happened and the customer's segment.
SELECT t.txn_id,
       t.customer_id,
       c.segment,
       CAST(CAST(t.event_time AS TIMESTAMP) AS DATE) AS day,
       t.channel,
       t.merchant,
       t.mcc,
       t.amount_gbp
FROM bronze.card_transactions t
JOIN silver.customers c ON t.customer_id = c.customer_id
WHERE t.status = 'approved'
