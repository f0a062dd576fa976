//! The ledger protocol over SQL, written once for every OLAP backend.
//!
//! The ledger (`consumer_offsets`) is the source of truth for what has been applied. A batch is
//! applied in ONE write transaction that locks its partitions' ledger rows, drops replays and
//! fenced records, folds the rest into the aggregates with `x = x + delta` upserts and advances
//! the ledger (docs/DESIGN.md, rule 4). Retrying the whole transaction after any error is always
//! safe: it re-reads the ledger, so a COMMIT whose outcome was unknown (rule 9) is either seen as
//! applied (its records are now below `next_offset`) or applied again exactly once. What a batch
//! may change is decided by `model::ledger`; this file only runs it.
//!
//! What differs between backends is a [`Dialect`]: how a write transaction starts and locks, the
//! spelling of insert-if-absent and of the additive upsert, the clock, the snapshot read, and
//! which error codes mean "retry" or "the data is refused".

use std::collections::{BTreeMap, BTreeSet};
use std::marker::PhantomData;

use chrono::{NaiveDate, NaiveDateTime};
use sqlx::{
    AssertSqlSafe, ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool,
    QueryBuilder, Row, Transaction, Type,
};

use super::OlapError;
use crate::model::{
    fold, plan, ApplyReport, Batch, Bisection, Claim, Deltas, LedgerRow, Plan, Record, Totals,
};
use crate::ops::{MinuteRow, SalesRow};

/// Rows per multi-row upsert statement (5 binds each: under SQLite's 32,766 bind limit and
/// MySQL's 65,535). A power of two, as every padded length is (see [`padded`]).
const UPSERT_CHUNK: usize = 512;

/// The length a list of `n` values is padded to in a statement: the next power of two.
///
/// The driver prepares each distinct statement text once per connection and keeps 100 of them.
/// A text that followed the batch exactly (its partitions, its number of aggregate rows) would
/// be new for nearly every batch of a topic with many partitions: a prepare round trip, and an
/// eviction that closes another statement, after which the next statement waits about 40 ms
/// (the close gets no reply, so with Nagle's algorithm on the driver's socket the next request
/// waits for the server's delayed ACK). Padded, a batch's statements come in a few dozen shapes
/// that all stay prepared.
fn padded(n: usize) -> usize {
    n.next_power_of_two()
}

/// `items`, then `filler` up to the padded length of `items`.
fn padded_with<T: Copy>(
    items: impl ExactSizeIterator<Item = T>,
    filler: T,
) -> impl Iterator<Item = T> {
    let n = padded(items.len());
    items.chain(std::iter::repeat(filler)).take(n)
}

/// What one SQL backend spells or decides its own way. Adding a backend means implementing this
/// for its `sqlx` driver and writing its schema file.
pub trait Dialect: Database {
    /// The `component` of its row in `schema_version`, and its name in messages.
    const STORE: &'static str;
    /// The schema file (tables, views), run statement by statement by `migrate`.
    const SCHEMA: &'static str;
    /// Version of the schema this binary expects; `migrate` writes it, `run` checks it.
    const SCHEMA_VERSION: i32;
    /// Opens a write transaction. SQLite has no row locks: `BEGIN IMMEDIATE` takes the database's
    /// write lock up front, so a claim and a batch transaction never interleave.
    const BEGIN_WRITE: &'static str;
    /// Appended to a SELECT of ledger rows inside a write transaction to lock them (empty where
    /// `BEGIN_WRITE` already holds the lock).
    const LOCK_ROWS: &'static str;
    /// Insert-if-absent, e.g. `INSERT IGNORE INTO`.
    const INSERT_IGNORE: &'static str;
    /// The current UTC time with milliseconds, as an SQL expression.
    const NOW: &'static str;
    /// Statements run on the connection before a snapshot transaction begins.
    const SNAPSHOT_PREPARE: &'static [&'static str];
    /// Begins a transaction whose reads all see one instant.
    const BEGIN_SNAPSHOT: &'static str;
    /// Today's (UTC) sales and profit by category: (category, sales, profit) as doubles.
    const SALES_TODAY_BY_CATEGORY: &'static str;
    /// Today's (UTC) sales by category and platform: (category, platform, orders, sales,
    /// profit), numbers as doubles.
    const SALES_TODAY: &'static str;
    /// Sales per minute since the bound time: (minute_start, orders, sales, profit).
    const SALES_PER_MINUTE_SINCE: &'static str;
    /// Sets `schema_version` of `STORE` to the bound version, inserting the row if missing.
    const RECORD_VERSION: &'static str;

    /// The tail of a multi-row INSERT into an aggregate table keyed by (`time_column`,
    /// platform_id, product_id) that adds the new counts to an existing row's.
    fn add_on_conflict(time_column: &str) -> String;
    /// The server says the schema is not there at all (no such table or database).
    fn is_missing_schema(err: &sqlx::Error) -> bool;
}

/// The protocol's operations for one backend `DB`. The bounds say what the SQL below needs from
/// a driver: an executor on its connections, and the column types the tables use.
pub struct Protocol<DB>(PhantomData<DB>);

impl<DB> Protocol<DB>
where
    DB: Dialect,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'e> &'e str: Encode<'e, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'e, 'r> i32: Encode<'e, DB> + Decode<'r, DB> + Type<DB>,
    for<'e, 'r> i64: Encode<'e, DB> + Decode<'r, DB> + Type<DB>,
    for<'r> f64: Decode<'r, DB> + Type<DB>,
    for<'e, 'r> NaiveDate: Encode<'e, DB> + Decode<'r, DB> + Type<DB>,
    for<'e, 'r> NaiveDateTime: Encode<'e, DB> + Decode<'r, DB> + Type<DB>,
{
    /// Runs the schema and the dimension seeds and records the schema version. Idempotent.
    pub(crate) async fn install_schema(conn: &mut DB::Connection) -> Result<(), OlapError> {
        // The schema files are ours, not user input.
        let seeds = super::seed_statements(DB::INSERT_IGNORE);
        for statement in crate::stores::split_statements(DB::SCHEMA)
            .into_iter()
            .chain(seeds)
        {
            sqlx::raw_sql(AssertSqlSafe(statement))
                .execute(&mut *conn)
                .await?;
        }
        sqlx::query(DB::RECORD_VERSION)
            .bind(DB::SCHEMA_VERSION)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Fails with `NotMigrated` unless the schema version matches this binary.
    pub(crate) async fn check_migrated(pool: &Pool<DB>, database: &str) -> Result<(), OlapError> {
        let found: Option<i32> =
            match sqlx::query("SELECT version FROM schema_version WHERE component = ?")
                .bind(DB::STORE)
                .fetch_optional(pool)
                .await
            {
                Ok(row) => row.map(|r| r.try_get(0)).transpose()?,
                Err(e) if DB::is_missing_schema(&e) => None,
                Err(e) => return Err(e.into()),
            };
        if found != Some(DB::SCHEMA_VERSION) {
            return Err(OlapError::NotMigrated {
                store: DB::STORE,
                database: database.to_owned(),
                found,
                expected: DB::SCHEMA_VERSION,
            });
        }
        Ok(())
    }

    /// Claims a partition (docs/DESIGN.md, rule 2): one write transaction that creates the
    /// ledger row if missing (at `start_offset`, the reset position), increments the owner epoch
    /// and reads the position.
    pub async fn claim(
        pool: &Pool<DB>,
        topic: &str,
        partition: i32,
        owner: &str,
        start_offset: i64,
    ) -> Result<Claim, OlapError> {
        let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
        let insert = format!(
            "{} consumer_offsets (topic, partition_id, next_offset, owner_epoch, owner) \
             VALUES (?, ?, ?, 0, '')",
            DB::INSERT_IGNORE
        );
        sqlx::query(AssertSqlSafe(insert))
            .bind(topic)
            .bind(partition)
            .bind(start_offset)
            .execute(&mut *tx)
            .await?;
        let select = format!(
            "SELECT next_offset, owner_epoch FROM consumer_offsets \
             WHERE topic = ? AND partition_id = ?{}",
            DB::LOCK_ROWS
        );
        let row = sqlx::query(AssertSqlSafe(select))
            .bind(topic)
            .bind(partition)
            .fetch_one(&mut *tx)
            .await?;
        let next_offset: i64 = row.try_get(0)?;
        let previous_epoch: i64 = row.try_get(1)?;
        let update = format!(
            "UPDATE consumer_offsets SET owner_epoch = ?, owner = ?, updated_at = {} \
             WHERE topic = ? AND partition_id = ?",
            DB::NOW
        );
        sqlx::query(AssertSqlSafe(update))
            .bind(previous_epoch + 1)
            .bind(owner)
            .bind(topic)
            .bind(partition)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Claim {
            partition,
            epoch: previous_epoch + 1,
            next_offset,
            // A row is inserted with epoch 0 and claimed in the same transaction, so a
            // committed row never shows epoch 0: this claim created it.
            created: previous_epoch == 0,
        })
    }

    /// Applies a batch in one write transaction (docs/DESIGN.md, rule 4). The caller retries
    /// transient errors.
    pub async fn apply_batch(
        pool: &Pool<DB>,
        topic: &str,
        batch: &Batch,
    ) -> Result<ApplyReport, OlapError> {
        let partitions = partitions_of(batch);
        if partitions.is_empty() {
            return Ok(ApplyReport::default());
        }
        let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
        let ledger = Self::lock_ledger(&mut tx, topic, &partitions).await?;
        let Plan {
            advance,
            applicable,
            mut report,
        } = plan(&ledger, batch);
        report.applied_created_at_ms = applicable
            .iter()
            .filter_map(|i| batch.records.get(*i).and_then(Record::order))
            .map(|o| o.created_at_ms)
            .collect();
        report.applied_orders = applicable.len();

        Self::write_deltas(&mut tx, &fold(batch, &applicable)).await?;
        Self::advance_ledger(&mut tx, topic, &advance).await?;
        report.committed.extend(advance);
        tx.commit().await?;
        Ok(report)
    }

    /// Finds the orders of a batch that the store refuses for their data (docs/DESIGN.md,
    /// rule 10), after `apply_batch` failed with a data rejection. Returns (record index, the
    /// server's message).
    ///
    /// Works in one transaction that changes nothing: under the ledger locks, each probe writes
    /// the deltas of some of the applicable orders inside a savepoint and rolls back to it (the
    /// search itself is `model::ledger::Bisection`).
    pub async fn find_rejected(
        pool: &Pool<DB>,
        topic: &str,
        batch: &Batch,
    ) -> Result<Vec<(usize, String)>, OlapError> {
        let partitions = partitions_of(batch);
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = pool.begin_with(DB::BEGIN_WRITE).await?;
        let ledger = Self::lock_ledger(&mut tx, topic, &partitions).await?;
        let candidates = plan(&ledger, batch).applicable;
        let mut search = Bisection::new(candidates);
        while let Some(indices) = search.next_probe() {
            let refused = Self::probe(&mut tx, &fold(batch, indices)).await?;
            search.record(refused);
        }
        tx.rollback().await?;
        Ok(search.rejected())
    }

    /// Writes `deltas` inside a savepoint and undoes them: `Some(message)` when the store refuses
    /// their data.
    async fn probe(
        tx: &mut Transaction<'_, DB>,
        deltas: &Deltas,
    ) -> Result<Option<String>, OlapError> {
        sqlx::raw_sql("SAVEPOINT probe").execute(&mut **tx).await?;
        let outcome = Self::write_deltas(tx, deltas).await;
        // A deadlock or a lost connection ends the whole transaction, savepoint and all: that
        // error, not the savepoint's absence, is what the caller must see (it is retried).
        if let Err(e) = &outcome {
            if e.is_transient() {
                return outcome.map(|()| None);
            }
        }
        // A failed statement is rolled back on its own; the savepoint undoes the ones before it.
        sqlx::raw_sql("ROLLBACK TO SAVEPOINT probe")
            .execute(&mut **tx)
            .await?;
        match outcome {
            Ok(()) => Ok(None),
            Err(e) if e.is_data_rejection() => Ok(Some(e.to_string())),
            Err(e) => Err(e),
        }
    }

    /// Reads (and, per the dialect, locks) the ledger rows of `partitions`, in partition order.
    async fn lock_ledger(
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        partitions: &BTreeSet<i32>,
    ) -> Result<BTreeMap<i32, LedgerRow>, OlapError> {
        let mut select = QueryBuilder::<DB>::new(
            "SELECT partition_id, next_offset, owner_epoch FROM consumer_offsets WHERE topic = ",
        );
        select.push_bind(topic).push(" AND partition_id IN (");
        let mut list = select.separated(", ");
        // Padded by repeating the last partition (see `padded`).
        let last = partitions.last().copied().unwrap_or_default();
        for p in padded_with(partitions.iter().copied(), last) {
            list.push_bind(p);
        }
        select.push(") ORDER BY partition_id").push(DB::LOCK_ROWS);
        let mut ledger = BTreeMap::new();
        for row in select.build().fetch_all(&mut **tx).await? {
            let next_offset = row.try_get(1)?;
            let epoch = row.try_get(2)?;
            ledger.insert(row.try_get(0)?, LedgerRow { next_offset, epoch });
        }
        Ok(ledger)
    }

    /// Moves the ledger rows of `advance` (partition → next offset) in one statement: a batch
    /// of a topic with many partitions touches many rows, and a statement each would cost a
    /// round trip each inside the transaction.
    async fn advance_ledger(
        tx: &mut Transaction<'_, DB>,
        topic: &str,
        advance: &BTreeMap<i32, i64>,
    ) -> Result<(), OlapError> {
        if advance.is_empty() {
            return Ok(());
        }
        // Padded by repeating the last row: the first WHEN of a partition decides, a repeated IN
        // value changes nothing (see `padded`).
        let last = advance
            .last_key_value()
            .map(|(p, next)| (*p, *next))
            .unwrap_or_default();
        let rows: Vec<(i32, i64)> =
            padded_with(advance.iter().map(|(p, next)| (*p, *next)), last).collect();
        let mut update =
            QueryBuilder::<DB>::new("UPDATE consumer_offsets SET next_offset = CASE partition_id");
        for (p, next) in &rows {
            update
                .push(" WHEN ")
                .push_bind(*p)
                .push(" THEN ")
                .push_bind(*next);
        }
        update
            .push(format!(" END, updated_at = {} WHERE topic = ", DB::NOW))
            .push_bind(topic)
            .push(" AND partition_id IN (");
        let mut list = update.separated(", ");
        for (p, _) in &rows {
            list.push_bind(*p);
        }
        update.push(")");
        update.build().execute(&mut **tx).await?;
        Ok(())
    }

    /// Adds the deltas to both aggregate tables with sorted multi-row additive upserts.
    async fn write_deltas(tx: &mut Transaction<'_, DB>, deltas: &Deltas) -> Result<(), OlapError> {
        Self::upsert(tx, "aggregated_sales", "order_date", &deltas.daily).await?;
        Self::upsert(tx, "sales_per_minute", "minute_start", &deltas.per_minute).await
    }

    /// Upserts rows keyed by (time, platform, product) into one aggregate table.
    async fn upsert<T>(
        tx: &mut Transaction<'_, DB>,
        table: &str,
        time_column: &str,
        rows: &BTreeMap<(T, i32, i32), Totals>,
    ) -> Result<(), OlapError>
    where
        T: Copy + for<'e> Encode<'e, DB> + Type<DB>,
    {
        let rows: Vec<((T, i32, i32), Totals)> = rows.iter().map(|(k, t)| (*k, *t)).collect();
        for chunk in rows.chunks(UPSERT_CHUNK) {
            // Padded with rows that add nothing to the chunk's first key (see `padded`).
            let pad = (chunk[0].0, Totals::default());
            let padded_rows = padded_with(chunk.iter().copied(), pad);
            let mut q = QueryBuilder::<DB>::new(format!(
                "INSERT INTO {table} ({time_column}, platform_id, product_id, order_count, total_quantity) "
            ));
            q.push_values(padded_rows, |mut b, ((time, platform, product), t)| {
                b.push_bind(time)
                    .push_bind(platform)
                    .push_bind(product)
                    .push_bind(t.order_count)
                    .push_bind(t.total_quantity);
            });
            q.push(DB::add_on_conflict(time_column));
            q.build().execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// The ledger of a topic with the owner of each row: partition → (next offset, owner).
    pub async fn read_ledger_owners(
        pool: &Pool<DB>,
        topic: &str,
    ) -> Result<BTreeMap<i32, (i64, String)>, OlapError> {
        let rows = sqlx::query(
            "SELECT partition_id, next_offset, owner FROM consumer_offsets WHERE topic = ?",
        )
        .bind(topic)
        .fetch_all(pool)
        .await?;
        let mut ledger = BTreeMap::new();
        for row in rows {
            ledger.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
        }
        Ok(ledger)
    }

    /// The ledger of a topic: partition → next offset.
    pub async fn read_ledger(
        pool: &Pool<DB>,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, OlapError> {
        Self::ledger_on(&mut *pool.acquire().await?, topic).await
    }

    /// Both aggregate tables, as stored.
    pub async fn read_aggregates(pool: &Pool<DB>) -> Result<Deltas, OlapError> {
        Self::aggregates_on(&mut *pool.acquire().await?).await
    }

    /// The ledger and the aggregates as of one instant, so that the aggregates are exactly the
    /// fold of every record below the ledger, even while the pipeline keeps committing (the
    /// audit).
    pub(crate) async fn snapshot(
        pool: &Pool<DB>,
        topic: &str,
    ) -> Result<(BTreeMap<i32, i64>, Deltas), OlapError> {
        use sqlx::Connection as _;
        let mut conn = pool.acquire().await?;
        for statement in DB::SNAPSHOT_PREPARE {
            sqlx::raw_sql(*statement).execute(&mut *conn).await?;
        }
        let mut tx = (*conn).begin_with(DB::BEGIN_SNAPSHOT).await?;
        let ledger = Self::ledger_on(&mut tx, topic).await?;
        let aggregates = Self::aggregates_on(&mut tx).await?;
        tx.commit().await?;
        Ok((ledger, aggregates))
    }

    async fn ledger_on(
        conn: &mut DB::Connection,
        topic: &str,
    ) -> Result<BTreeMap<i32, i64>, OlapError> {
        let rows =
            sqlx::query("SELECT partition_id, next_offset FROM consumer_offsets WHERE topic = ?")
                .bind(topic)
                .fetch_all(&mut *conn)
                .await?;
        let mut ledger = BTreeMap::new();
        for row in rows {
            ledger.insert(row.try_get(0)?, row.try_get(1)?);
        }
        Ok(ledger)
    }

    async fn aggregates_on(conn: &mut DB::Connection) -> Result<Deltas, OlapError> {
        let mut stored = Deltas::default();
        let columns = "platform_id, product_id, order_count, total_quantity";
        let daily = format!("SELECT order_date, {columns} FROM aggregated_sales");
        for row in sqlx::query(AssertSqlSafe(daily))
            .fetch_all(&mut *conn)
            .await?
        {
            stored.daily.insert(key_of(&row)?, totals_of(&row)?);
        }
        let per_minute = format!("SELECT minute_start, {columns} FROM sales_per_minute");
        for row in sqlx::query(AssertSqlSafe(per_minute))
            .fetch_all(&mut *conn)
            .await?
        {
            stored.per_minute.insert(key_of(&row)?, totals_of(&row)?);
        }
        Ok(stored)
    }

    /// Today's (UTC) sales and profit by category, from the dashboard's view:
    /// (category, sales, profit).
    pub(crate) async fn sales_today_by_category(
        pool: &Pool<DB>,
    ) -> Result<Vec<(String, f64, f64)>, OlapError> {
        let rows = sqlx::query(DB::SALES_TODAY_BY_CATEGORY)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect()
    }

    /// Today's sales by category and platform, and per minute since `since` (the console).
    pub async fn sales(
        pool: &Pool<DB>,
        since: NaiveDateTime,
    ) -> Result<(Vec<SalesRow>, Vec<MinuteRow>), OlapError> {
        let mut rows = Vec::new();
        for r in sqlx::query(DB::SALES_TODAY).fetch_all(pool).await? {
            rows.push(SalesRow {
                category: r.try_get(0)?,
                platform: r.try_get(1)?,
                orders: r.try_get(2)?,
                sales: r.try_get(3)?,
                profit: r.try_get(4)?,
            });
        }
        let mut minutes = Vec::new();
        for r in sqlx::query(DB::SALES_PER_MINUTE_SINCE)
            .bind(since)
            .fetch_all(pool)
            .await?
        {
            let minute: NaiveDateTime = r.try_get(0)?;
            minutes.push(MinuteRow {
                minute: minute.and_utc().timestamp(),
                orders: r.try_get(1)?,
                sales: r.try_get(2)?,
                profit: r.try_get(3)?,
            });
        }
        Ok((rows, minutes))
    }

    /// Whether the store answers (readiness probe).
    pub(crate) async fn ping(pool: &Pool<DB>) -> bool {
        sqlx::query("SELECT 1").execute(pool).await.is_ok()
    }
}

fn partitions_of(batch: &Batch) -> BTreeSet<i32> {
    batch.records.iter().map(|r| r.partition).collect()
}

/// The (time, platform, product) key of an aggregate row read as `time, platform_id,
/// product_id, order_count, total_quantity`.
fn key_of<R, T>(row: &R) -> Result<(T, i32, i32), sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> T: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
}

fn totals_of<R>(row: &R) -> Result<Totals, sqlx::Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(Totals {
        order_count: row.try_get(3)?,
        total_quantity: row.try_get(4)?,
    })
}
