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

-- Leases of the node part of order ids (see src/node_lease.rs): one row per node, seeded by
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

INSERT IGNORE INTO platforms (platform_id, platform_name) VALUES
  (1, 'Amazon'), (2, 'eBay'), (3, 'Walmart'), (4, 'Shopify');

INSERT IGNORE INTO categories (category_id, category_name, margin) VALUES
  (1, 'Electronics', 0.1500), (2, 'Clothing', 0.4000), (3, 'Home & Kitchen', 0.3000), (4, 'Books', 0.2000);

INSERT IGNORE INTO products (product_id, product_name, category_id, cost_price) VALUES
  (1, 'Smartphone', 1, 420.00), (2, 'Laptop', 1, 780.00), (3, 'Wireless Earbuds', 1, 55.00),
  (4, 'Smartwatch', 1, 160.00), (5, 'Tablet', 1, 290.00),
  (6, 'T-Shirt', 2, 8.50), (7, 'Jeans', 2, 24.00), (8, 'Sneakers', 2, 38.00),
  (9, 'Winter Jacket', 2, 65.00), (10, 'Dress', 2, 30.00),
  (11, 'Coffee Maker', 3, 48.00), (12, 'Blender', 3, 32.00), (13, 'Cookware Set', 3, 75.00),
  (14, 'Desk Lamp', 3, 14.00), (15, 'Bed Sheets', 3, 22.00),
  (16, 'Novel', 4, 7.00), (17, 'Cookbook', 4, 12.00), (18, 'Textbook', 4, 60.00),
  (19, 'Comic Book', 4, 4.50), (20, 'Biography', 4, 11.00);

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
