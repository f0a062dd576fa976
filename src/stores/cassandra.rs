//! The Cassandra / ScyllaDB side: session, schema, the idempotent insert and a paged read-back.
//!
//! The production write path is individual prepared, token-aware, idempotent `INSERT`s keyed by
//! `order_id` (docs/DESIGN.md, rule 5): a replayed insert rewrites the same row with the same
//! values. No counters, `now()`, list appends or multi-partition batches. Reads for audits page
//! through the whole table instead of `count(*)` or `IN`, which real clusters do badly.

use super::split_statements;
use std::future::Future;
use std::time::Duration;

use futures::TryStreamExt;
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::OpenSsl010Config;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::{
    ConnectionError, ConnectionPoolError, DbError, ExecutionError, RequestAttemptError,
};
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::Consistency;
use scylla::value::CqlTimestamp;

use crate::config::CassandraConfig;
use crate::model::{Order, PaymentMethod};

const SCHEMA: &str = include_str!("schema/cassandra.cql");

/// The driver's error behind a failed request or a malformed row.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Errors of the Cassandra store.
#[derive(Debug, thiserror::Error)]
pub enum CassandraError {
    #[error("cannot connect to cassandra: {0}")]
    Connect(#[source] Box<scylla::errors::NewSessionError>),
    #[error("cassandra TLS settings: {0}")]
    Tls(String),
    #[error("cassandra request failed: {0}")]
    Request(#[source] BoxError),
    #[error("cassandra refused the row: {0}")]
    Rejected(#[source] Box<ExecutionError>),
    #[error(
        "cassandra keyspace {keyspace} has no table `orders`: run `orderstream migrate` first"
    )]
    NotMigrated { keyspace: String },
    #[error("cassandra returned a malformed row: {0}")]
    BadRow(#[source] BoxError),
}

impl CassandraError {
    /// Retry (the store is down or slow) or reject (the data itself is refused).
    pub(crate) fn is_rejection(&self) -> bool {
        matches!(self, Self::Rejected(_))
    }

    /// Whether retrying cannot help the connection: the TLS files cannot be used, or the nodes'
    /// certificates fail the check.
    pub(crate) fn is_configuration(&self) -> bool {
        match self {
            Self::Tls(_) => true,
            Self::Connect(e) => rejected_handshake(e.as_ref()),
            _ => false,
        }
    }
}

/// Whether the driver gave up on the nodes because their certificates failed the check. The
/// driver keeps a broken pool's last error beside the chain, not in it: look there.
fn rejected_handshake(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(ConnectionPoolError::Broken {
            last_connection_error: ConnectionError::IoError(io),
        }) = e.downcast_ref::<ConnectionPoolError>()
        {
            return super::tls::handshake(io.as_ref()) == super::tls::Handshake::Rejected;
        }
        next = e.source();
    }
    super::tls::handshake(err) == super::tls::Handshake::Rejected
}

/// A connected session with its prepared insert and delete.
pub struct CassandraStore {
    session: Session,
    insert: PreparedStatement,
    delete: PreparedStatement,
    keyspace: String,
}

/// Opens a session (without preparing anything; `migrate` uses this before the table exists).
pub async fn connect_session(cfg: &CassandraConfig) -> Result<Session, CassandraError> {
    let consistency = cfg.consistency_level().unwrap_or(Consistency::LocalQuorum);
    let profile = ExecutionProfile::builder()
        .consistency(consistency)
        .request_timeout(Some(Duration::from_millis(cfg.request_timeout_ms)))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&cfg.contact_points)
        .connection_timeout(Duration::from_millis(cfg.request_timeout_ms))
        .auto_await_schema_agreement(cfg.await_schema_agreement)
        .default_execution_profile_handle(profile.into_handle());
    if !cfg.user.is_empty() {
        builder = builder.user(cfg.user.clone(), cfg.password.expose().to_owned());
    }
    if cfg.ssl {
        let connector = super::tls::connector(&super::tls::TlsFiles {
            ca: &cfg.ssl_ca_file,
            certificate: &cfg.ssl_certificate_file,
            key: &cfg.ssl_key_file,
            verify_hostname: cfg.ssl_verify_hostname,
        })
        .map_err(CassandraError::Tls)?;
        builder = builder.tls_context(Some(OpenSsl010Config::new(connector)));
    }
    builder
        .build()
        .await
        .map_err(|e| CassandraError::Connect(Box::new(e)))
}

impl CassandraStore {
    /// Connects and prepares the insert; fails with `NotMigrated` when the table is missing.
    pub async fn connect(cfg: &CassandraConfig) -> Result<Self, CassandraError> {
        let session = connect_session(cfg).await?;
        orders_table(&session, &cfg.keyspace).await?;
        let mut insert = session
            .prepare(format!(
                "INSERT INTO {}.orders (order_id, created_at, platform_id, product_id, quantity, \
                 customer_id, payment_method) VALUES (?, ?, ?, ?, ?, ?, ?)",
                cfg.keyspace
            ))
            .await
            .map_err(|e| CassandraError::Request(e.into()))?;
        insert.set_is_idempotent(true);
        let mut delete = session
            .prepare(format!(
                "DELETE FROM {}.orders WHERE order_id = ?",
                cfg.keyspace
            ))
            .await
            .map_err(|e| CassandraError::Request(e.into()))?;
        delete.set_is_idempotent(true);
        Ok(Self {
            session,
            insert,
            delete,
            keyspace: cfg.keyspace.clone(),
        })
    }

    /// Upserts one order. Safe to repeat.
    ///
    /// The future is the driver's request, about 4 KiB and not boxed: a caller that runs many
    /// at once keeps each in one heap block, best reused from insert to insert (see
    /// `pipeline::cassandra_writer`).
    pub fn insert(&self, order: &Order) -> impl Future<Output = Result<(), CassandraError>> + '_ {
        let values = (
            order.order_id,
            CqlTimestamp(order.created_at_ms),
            order.platform_id,
            order.product_id,
            order.quantity,
            order.customer_id,
            order.payment_method.as_str(),
        );
        async move {
            self.session
                .execute_unpaged(&self.insert, values)
                .await
                .map(|_| ())
                .map_err(classify)
        }
    }

    /// Removes one order: the compensation when MySQL refuses an order that Cassandra already
    /// holds (docs/DESIGN.md, rule 10), so a dead-lettered record is in neither store. Safe to
    /// repeat.
    pub async fn delete(&self, order_id: i64) -> Result<(), CassandraError> {
        self.session
            .execute_unpaged(&self.delete, (order_id,))
            .await
            .map(|_| ())
            .map_err(classify)
    }

    /// Reads every stored order by paging through the table (audits and tests).
    pub async fn read_all(&self) -> Result<Vec<Order>, CassandraError> {
        type Row = (i64, CqlTimestamp, i32, i32, i32, i32, String);
        let mut select = scylla::statement::Statement::new(format!(
            "SELECT order_id, created_at, platform_id, product_id, quantity, customer_id, \
             payment_method FROM {}.orders",
            self.keyspace
        ));
        select.set_page_size(5_000);
        let pager = self
            .session
            .query_iter(select, ())
            .await
            .map_err(|e| CassandraError::Request(e.into()))?;
        let mut rows = pager
            .rows_stream::<Row>()
            .map_err(|e| CassandraError::BadRow(e.into()))?;
        let mut orders = Vec::new();
        while let Some(row) = rows
            .try_next()
            .await
            .map_err(|e| CassandraError::Request(e.into()))?
        {
            let (order_id, created, platform_id, product_id, quantity, customer_id, method) = row;
            let payment_method = PaymentMethod::parse(&method).ok_or_else(|| {
                CassandraError::BadRow(format!("payment method {method:?}").into())
            })?;
            orders.push(Order {
                order_id,
                created_at_ms: created.0,
                platform_id,
                product_id,
                quantity,
                customer_id,
                payment_method,
            });
        }
        Ok(orders)
    }

    /// `NotMigrated` unless the `orders` table is still there, and an error unless every node
    /// agrees on the schema. A node answers a write to a table it does not have as it answers a
    /// value it refuses (Invalid), so refusals are only taken as the data's once the table is
    /// known to exist on every node.
    pub(crate) async fn check_table(&self) -> Result<(), CassandraError> {
        orders_table(&self.session, &self.keyspace).await?;
        match self.session.check_schema_agreement().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(CassandraError::Request(
                "the nodes do not agree on the schema yet (a table still spreading)".into(),
            )),
            Err(e) => Err(CassandraError::Request(e.into())),
        }
    }

    /// Whether the store answers and still holds the `orders` table (readiness): a node that
    /// lost the table answers, yet refuses every write.
    pub(crate) async fn ping(&self) -> bool {
        orders_table(&self.session, &self.keyspace).await.is_ok()
    }
}

fn classify(err: ExecutionError) -> CassandraError {
    match &err {
        // The node parsed the request and refused the values themselves: retrying cannot help.
        // (A missing table is answered Invalid too: the writer tells the two apart.)
        ExecutionError::LastAttemptError(RequestAttemptError::DbError(DbError::Invalid, _))
        | ExecutionError::LastAttemptError(RequestAttemptError::SerializationError(_)) => {
            CassandraError::Rejected(Box::new(err))
        }
        _ => CassandraError::Request(err.into()),
    }
}

/// `NotMigrated` unless `keyspace.orders` exists.
async fn orders_table(session: &Session, keyspace: &str) -> Result<(), CassandraError> {
    if table_exists(session, keyspace, "orders").await? {
        Ok(())
    } else {
        Err(CassandraError::NotMigrated {
            keyspace: keyspace.to_owned(),
        })
    }
}

/// Whether `keyspace.table` exists, read from system_schema (IF NOT EXISTS is not trusted: the
/// emulator ignores it).
pub async fn table_exists(
    session: &Session,
    keyspace: &str,
    table: &str,
) -> Result<bool, CassandraError> {
    let tables: Vec<(String, String)> = system_rows(
        session,
        "SELECT keyspace_name, table_name FROM system_schema.tables",
    )
    .await?;
    Ok(tables.iter().any(|(ks, t)| ks == keyspace && t == table))
}

async fn keyspace_exists(session: &Session, keyspace: &str) -> Result<bool, CassandraError> {
    let keyspaces: Vec<(String,)> =
        system_rows(session, "SELECT keyspace_name FROM system_schema.keyspaces").await?;
    Ok(keyspaces.iter().any(|(ks,)| ks == keyspace))
}

/// Every row of a query on the system tables.
async fn system_rows<R>(session: &Session, query: &'static str) -> Result<Vec<R>, CassandraError>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let result = session
        .query_unpaged(query, ())
        .await
        .map_err(|e| CassandraError::Request(e.into()))?;
    let rows = result
        .into_rows_result()
        .map_err(|e| CassandraError::BadRow(e.into()))?;
    rows.rows::<R>()
        .map_err(|e| CassandraError::BadRow(e.into()))?
        .map(|row| row.map_err(|e| CassandraError::BadRow(e.into())))
        .collect()
}

/// Creates the keyspace and the table when missing. Safe to repeat.
pub async fn migrate(cfg: &CassandraConfig) -> Result<(), CassandraError> {
    let session = connect_session(cfg).await?;
    let rendered = SCHEMA
        .replace("{keyspace}", &cfg.keyspace)
        .replace("{replication_factor}", &cfg.replication_factor.to_string());
    let statements = split_statements(&rendered);
    for statement in statements {
        let creates_keyspace = statement.starts_with("CREATE KEYSPACE");
        let exists = if creates_keyspace {
            keyspace_exists(&session, &cfg.keyspace).await?
        } else {
            table_exists(&session, &cfg.keyspace, "orders").await?
        };
        if !exists {
            session
                .query_unpaged(statement, ())
                .await
                .map_err(|e| CassandraError::Request(e.into()))?;
        }
    }
    Ok(())
}
