-- Dimension seeds, shared by the MySQL and SQLite schemas. Each dialect turns `INSERT INTO` into
-- its own insert-if-absent (`INSERT IGNORE`, `INSERT OR IGNORE`), so re-running migrate keeps
-- rows already there. Same statement rules as mysql.sql.

INSERT INTO platforms (platform_id, platform_name) VALUES
  (1, 'Amazon'), (2, 'eBay'), (3, 'Walmart'), (4, 'Shopify');

INSERT INTO categories (category_id, category_name, margin) VALUES
  (1, 'Electronics', 0.1500), (2, 'Clothing', 0.4000), (3, 'Home & Kitchen', 0.3000), (4, 'Books', 0.2000);

INSERT INTO products (product_id, product_name, category_id, cost_price) VALUES
  (1, 'Smartphone', 1, 420.00), (2, 'Laptop', 1, 780.00), (3, 'Wireless Earbuds', 1, 55.00),
  (4, 'Smartwatch', 1, 160.00), (5, 'Tablet', 1, 290.00),
  (6, 'T-Shirt', 2, 8.50), (7, 'Jeans', 2, 24.00), (8, 'Sneakers', 2, 38.00),
  (9, 'Winter Jacket', 2, 65.00), (10, 'Dress', 2, 30.00),
  (11, 'Coffee Maker', 3, 48.00), (12, 'Blender', 3, 32.00), (13, 'Cookware Set', 3, 75.00),
  (14, 'Desk Lamp', 3, 14.00), (15, 'Bed Sheets', 3, 22.00),
  (16, 'Novel', 4, 7.00), (17, 'Cookbook', 4, 12.00), (18, 'Textbook', 4, 60.00),
  (19, 'Comic Book', 4, 4.50), (20, 'Biography', 4, 11.00);
