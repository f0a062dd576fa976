-- orderstream SQLite schema: the OLAP store of `orderstream demo` (and of anyone who wants the
-- pipeline without a MySQL server). The same tables, keys and views as mysql.sql, in SQLite's
-- spelling, but for producer_leases (the demo's one producer has its id node to itself); the seeds come from seeds.sql. Every statement is safe to repeat. Same statement
-- rules as mysql.sql: no semicolons inside statements.
--
-- Dates are TEXT as sqlx writes them ('YYYY-MM-DD', 'YYYY-MM-DD HH:MM:SS'), so keys compare and
-- sort as they do in MySQL. Money is computed in the views as REAL rounded to cents.

CREATE TABLE IF NOT EXISTS platforms (
  platform_id   INTEGER NOT NULL PRIMARY KEY,
  platform_name TEXT    NOT NULL
);

CREATE TABLE IF NOT EXISTS categories (
  category_id   INTEGER NOT NULL PRIMARY KEY,
  category_name TEXT    NOT NULL,
  margin        REAL    NOT NULL
);

CREATE TABLE IF NOT EXISTS products (
  product_id    INTEGER NOT NULL PRIMARY KEY,
  product_name  TEXT    NOT NULL,
  category_id   INTEGER NOT NULL,
  cost_price    REAL    NOT NULL
);

CREATE TABLE IF NOT EXISTS aggregated_sales (
  order_date     TEXT    NOT NULL,
  platform_id    INTEGER NOT NULL,
  product_id     INTEGER NOT NULL,
  order_count    INTEGER NOT NULL,
  total_quantity INTEGER NOT NULL,
  PRIMARY KEY (order_date, platform_id, product_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS sales_per_minute (
  minute_start   TEXT    NOT NULL,
  platform_id    INTEGER NOT NULL,
  product_id     INTEGER NOT NULL,
  order_count    INTEGER NOT NULL,
  total_quantity INTEGER NOT NULL,
  PRIMARY KEY (minute_start, platform_id, product_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS consumer_offsets (
  topic        TEXT    NOT NULL,
  partition_id INTEGER NOT NULL,
  next_offset  INTEGER NOT NULL,
  owner_epoch  INTEGER NOT NULL DEFAULT 0,
  owner        TEXT    NOT NULL DEFAULT '',
  updated_at   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
  PRIMARY KEY (topic, partition_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS schema_version (
  component  TEXT    NOT NULL PRIMARY KEY,
  version    INTEGER NOT NULL,
  applied_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);

-- SQLite has no CREATE OR REPLACE VIEW.
DROP VIEW IF EXISTS sales_and_profit_today;

CREATE VIEW sales_and_profit_today AS
SELECT
  COALESCE(c.category_name, 'unknown')  AS category,
  COALESCE(pl.platform_name, 'unknown') AS platform,
  SUM(a.order_count)                    AS orders,
  SUM(a.total_quantity)                 AS quantity,
  ROUND(SUM(a.total_quantity * COALESCE(p.cost_price * (1 + c.margin), 0)), 2) AS total_sales,
  ROUND(SUM(a.total_quantity * COALESCE(p.cost_price * c.margin, 0)), 2)       AS total_profit
FROM aggregated_sales a
LEFT JOIN products   p  ON p.product_id   = a.product_id
LEFT JOIN categories c  ON c.category_id  = p.category_id
LEFT JOIN platforms  pl ON pl.platform_id = a.platform_id
WHERE a.order_date = date('now')
GROUP BY COALESCE(c.category_name, 'unknown'), COALESCE(pl.platform_name, 'unknown');

DROP VIEW IF EXISTS sales_per_minute_amounts;

CREATE VIEW sales_per_minute_amounts AS
SELECT
  s.minute_start,
  SUM(s.order_count)    AS orders,
  SUM(s.total_quantity) AS quantity,
  ROUND(SUM(s.total_quantity * COALESCE(p.cost_price * (1 + c.margin), 0)), 2) AS total_sales,
  ROUND(SUM(s.total_quantity * COALESCE(p.cost_price * c.margin, 0)), 2)       AS total_profit
FROM sales_per_minute s
LEFT JOIN products   p ON p.product_id  = s.product_id
LEFT JOIN categories c ON c.category_id = p.category_id
GROUP BY s.minute_start;
