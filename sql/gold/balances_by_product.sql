-- Accounts and balances by product (balances as the PII policy generalised them).
SELECT product,
       count(*) AS accounts,
       count(DISTINCT customer_id) AS customers,
       CAST(round(sum(balance_gbp), 2) AS DECIMAL(16, 2)) AS balance_gbp,
       CAST(round(avg(balance_gbp), 2) AS DECIMAL(14, 2)) AS average_balance_gbp
FROM silver.accounts
GROUP BY product
