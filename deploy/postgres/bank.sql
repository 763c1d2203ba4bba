-- The operational tables Debezium streams into sluice's silver layer (docker-compose.yml).
CREATE TABLE customers (
    customer_id      text PRIMARY KEY,
    first_name       text NOT NULL,
    last_name        text NOT NULL,
    email            text NOT NULL,
    phone            text,
    date_of_birth    text,
    segment          text NOT NULL,
    marketing_opt_in boolean NOT NULL DEFAULT false,
    created_at       text NOT NULL,
    notes            text
);

CREATE TABLE accounts (
    account_id     text PRIMARY KEY,
    customer_id    text NOT NULL REFERENCES customers (customer_id),
    product        text NOT NULL,
    sort_code      text NOT NULL,
    account_number text NOT NULL,
    opened_at      text NOT NULL,
    balance_gbp    double precision NOT NULL
);

INSERT INTO customers VALUES
  ('C0000001', 'Olivia', 'Smith', 'olivia.smith1@example.co.uk', '+44 7700 900001', '1984-03-12', 'mass', true, '2026-01-01T00:00:01.000Z', 'KYC verified by phone on +44 7700 900001'),
  ('C0000002', 'Noah', 'Patel', 'noah.patel2@example.co.uk', '+44 7700 900002', '1991-11-02', 'affluent', false, '2026-01-01T00:00:02.000Z', 'prefers app');

INSERT INTO accounts VALUES
  ('A00000001', 'C0000001', 'current', '20-00-01', '12345678', '2026-01-01T00:00:01.500Z', 1520.25),
  ('A00000002', 'C0000002', 'savings', '20-00-02', '87654321', '2026-01-01T00:00:02.500Z', 98000.00);
