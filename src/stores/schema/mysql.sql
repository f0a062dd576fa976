-- orderstream MySQL schema (MariaDB 10.11 and MySQL 8). Applied by `orderstream migrate`, which
-- holds a named lock while it runs; every statement is safe to repeat. Statements are separated
-- by a line holding only `;`-terminated SQL; no semicolons inside statements.

-- Dimensions (seeded below). Ids missing here are valid in orders and show as `unknown`.
CREATE TABLE IF NOT EXISTS platforms (
  platform_id   INT          NOT NULL PRIMARY KEY,
  platform_name VARCHAR(64)  NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS categories (
  category_id   INT          NOT NULL PRIMARY KEY,
  category_name VARCHAR(64)  NOT NULL,
  margin        DECIMAL(5,4) NOT NULL COMMENT 'profit share of the selling price over cost'
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS products (
  product_id    INT           NOT NULL PRIMARY KEY,
  product_name  VARCHAR(128)  NOT NULL,
  category_id   INT           NOT NULL,
  cost_price    DECIMAL(12,2) NOT NULL
) ENGINE=InnoDB;

-- Aggregates, folded in by the pipeline with `x = x + delta` upserts.
CREATE TABLE IF NOT EXISTS aggregated_sales (
  order_date     DATE    NOT NULL COMMENT 'UTC date of created_at',
  platform_id    INT     NOT NULL,
  product_id     INT     NOT NULL,
  order_count    BIGINT  NOT NULL,
  total_quantity BIGINT  NOT NULL,
  PRIMARY KEY (order_date, platform_id, product_id)
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS sales_per_minute (
  minute_start   DATETIME NOT NULL COMMENT 'UTC minute of created_at',
  platform_id    INT      NOT NULL,
  product_id     INT      NOT NULL,
  order_count    BIGINT   NOT NULL,
  total_quantity BIGINT   NOT NULL,
  PRIMARY KEY (minute_start, platform_id, product_id)
) ENGINE=InnoDB;

-- The offset ledger: what has been applied, per topic partition (not per group: the aggregates
-- are global). owner_epoch fences an instance that lost the partition.
CREATE TABLE IF NOT EXISTS consumer_offsets (
  topic        VARCHAR(249) NOT NULL,
  partition_id INT          NOT NULL,
  next_offset  BIGINT       NOT NULL,
  owner_epoch  BIGINT       NOT NULL DEFAULT 0,
  owner        VARCHAR(255) NOT NULL DEFAULT '',
  updated_at   TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  PRIMARY KEY (topic, partition_id)
) ENGINE=InnoDB;

-- Leases of the node part of order ids (see src/tools/node_lease.rs): one row per node, seeded by
-- migrate. A producer owns a node while expires_at is in the future; the next owner issues ids
-- above reserved_until_ms (Unix milliseconds), the highest millisecond the last owner could use.
CREATE TABLE IF NOT EXISTS producer_leases (
  node_id           SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
  owner             VARCHAR(200) NOT NULL,
  expires_at        DATETIME(3)  NOT NULL,
  reserved_until_ms BIGINT       NOT NULL
) ENGINE=InnoDB;

CREATE TABLE IF NOT EXISTS schema_version (
  component  VARCHAR(32)  NOT NULL PRIMARY KEY,
  version    INT          NOT NULL,
  applied_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
) ENGINE=InnoDB;

-- The dimension seeds are in seeds.sql, shared with the SQLite schema.

-- Today's sales and profit (UTC) by category and platform: the tutorial dashboard's content.
-- selling price = cost_price * (1 + margin); profit = cost_price * margin per unit.
CREATE OR REPLACE VIEW sales_and_profit_today AS
SELECT
  COALESCE(c.category_name, 'unknown')  AS category,
  COALESCE(pl.platform_name, 'unknown') AS platform,
  SUM(a.order_count)                    AS orders,
  SUM(a.total_quantity)                 AS quantity,
  CAST(SUM(a.total_quantity * COALESCE(p.cost_price * (1 + c.margin), 0)) AS DECIMAL(20,2)) AS total_sales,
  CAST(SUM(a.total_quantity * COALESCE(p.cost_price * c.margin, 0)) AS DECIMAL(20,2))       AS total_profit
FROM aggregated_sales a
LEFT JOIN products   p  ON p.product_id   = a.product_id
LEFT JOIN categories c  ON c.category_id  = p.category_id
LEFT JOIN platforms  pl ON pl.platform_id = a.platform_id
WHERE a.order_date = UTC_DATE()
GROUP BY COALESCE(c.category_name, 'unknown'), COALESCE(pl.platform_name, 'unknown');

-- Sales per UTC minute, for the time-series panel.
CREATE OR REPLACE VIEW sales_per_minute_amounts AS
SELECT
  s.minute_start,
  SUM(s.order_count)    AS orders,
  SUM(s.total_quantity) AS quantity,
  CAST(SUM(s.total_quantity * COALESCE(p.cost_price * (1 + c.margin), 0)) AS DECIMAL(20,2)) AS total_sales,
  CAST(SUM(s.total_quantity * COALESCE(p.cost_price * c.margin, 0)) AS DECIMAL(20,2))       AS total_profit
FROM sales_per_minute s
LEFT JOIN products   p ON p.product_id  = s.product_id
LEFT JOIN categories c ON c.category_id = p.category_id
GROUP BY s.minute_start;

-- One producer lease row per id node (0..1023, `NODES` in src/tools/node_lease.rs), expired, so
-- acquiring a node always finds a row to lock. 4^5 = 1,024 rows from five base-4 digits.
INSERT IGNORE INTO producer_leases (node_id, owner, expires_at, reserved_until_ms)
SELECT d0.d + 4 * d1.d + 16 * d2.d + 64 * d3.d + 256 * d4.d, '', '1970-01-01 00:00:01', 0
FROM (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) d0
CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) d1
CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) d2
CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) d3
CROSS JOIN (SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) d4;
