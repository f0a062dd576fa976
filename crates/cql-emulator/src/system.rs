//! The system tables the `scylla` driver reads to build its cluster metadata, answered the way a
//! single Cassandra 4.0 node answers them.
//!
//! On connecting, and again on every metadata refresh (once a minute by default), the driver
//! prepares and executes a fixed set of SELECTs on its control connection: `system.local` and
//! `system.peers` for the topology, `system_schema.{keyspaces,types,columns,tables,views}` for
//! the schema, and `system_schema.scylla_{tables,keyspaces}` to tell ScyllaDB from Cassandra.
//! kassandra does not answer them the way a node does:
//! - it declares a bind variable for every WHERE restriction, literals included, so the driver's
//!   `... FROM system.local WHERE key='local'` seems to take one value; the driver sends none,
//!   skips the row with a warning, finds no node at all and gives up on the metadata;
//! - its `system.local` row is fixed: 127.0.0.1 whatever address the client used, and a token
//!   ("hello") that is not a Murmur3 token;
//! - its `system_schema.columns` spells `boolean` "bool" and `tinyint` "timyint", which the driver
//!   takes for user-defined types that do not exist, dropping the keyspace with a warning;
//! - it cannot parse `... WHERE keyspace_name IN ?`: it drops the clause and its bind variable.
//!
//! [`answer`] takes those requests (QUERY, PREPARE, and EXECUTE of what it prepared) before
//! kassandra sees them; it returns `None` for everything else. The schema rows still come from
//! kassandra's own `system_schema` tables, with the two type names corrected.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock, PoisonError, RwLock};

use kassandra::cql::column::ColumnType;
use kassandra::cql::value::{deserialize_value, CqlValue};
use kassandra::error::DbError;
use kassandra::frame::request::query::Query;
use kassandra::frame::request::{QueryParameters, RequestOpcode};
use kassandra::frame::response::error::Error as CqlError;
use kassandra::frame::response::result::{
    ColumnSpec, Prepared, PreparedMetadata, QueryResult, ResultMetadata, Row, Rows, TableSpec,
};
use kassandra::frame::response::Response;
use kassandra::frame::value::FrameValue;
use kassandra::frame::FrameFlags;
use kassandra::session::KassandraSession;

// The node. host_id and schema_version are the ones in kassandra's own system.local row.
const HOST_ID: u128 = 0xaa1f1ae0_469d_4abf_ae3f_ecb7a17132fe;
const SCHEMA_VERSION: u128 = 0x0b1c3252_f787_4099_8594_157323b71789;
const CLUSTER_NAME: &str = "Test Cluster";
const DATA_CENTER: &str = "datacenter1";
const RACK: &str = "rack1";
const RELEASE_VERSION: &str = "4.0.0";
const CQL_VERSION: &str = "3.4.5";
const PARTITIONER: &str = "org.apache.cassandra.dht.Murmur3Partitioner";
/// One token: the node owns the whole ring.
const TOKEN: &str = "0";
const GOSSIP_GENERATION: i32 = 1_700_000_000;
const STORAGE_PORT: i32 = 7000;

/// What scylla 1.9 prepares on its control connection (cluster/metadata/fetching.rs). Their ids
/// are known from the start, so a driver that prepared them before the emulator restarted can
/// still execute them afterwards.
const TOPOLOGY_STATEMENTS: &[&str] = &[
    "SELECT host_id, rpc_address, data_center, rack, tokens FROM system.peers",
    "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'",
];
/// The driver also prepares each of these with ` where keyspace_name in ?` appended, when it
/// fetches only some keyspaces.
const SCHEMA_STATEMENTS: &[&str] = &[
    "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces",
    "SELECT keyspace_name, type_name, field_names, field_types FROM system_schema.types",
    "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns",
    "SELECT keyspace_name, table_name FROM system_schema.tables",
    "SELECT keyspace_name, view_name, base_table_name FROM system_schema.views",
];

/// Answers a request on one of the system tables above; `None` leaves the request to kassandra.
///
/// `node` is the address the client reached this connection on (its local address): the node
/// presents itself there, as `rpc_address`, `broadcast_address` and `listen_address`.
pub fn answer(
    opcode: RequestOpcode,
    body: &[u8],
    node: SocketAddr,
    session: &Mutex<KassandraSession>,
) -> Option<Response> {
    let result = match opcode {
        RequestOpcode::Query => {
            let (text, parameters) = long_string(body)?;
            let select = Select::parse(text)?;
            let source = Source::of(&select)?;
            run(&select, &source, parameters, node, session)
        }
        RequestOpcode::Prepare => {
            let (text, _) = long_string(body)?;
            let select = Select::parse(text)?;
            let source = Source::of(&select)?;
            prepare(text, &select, &source, node, session)
        }
        RequestOpcode::Execute => {
            let (id, parameters) = short_bytes(body)?;
            let id = u128::from_be_bytes(<[u8; 16]>::try_from(id).ok()?);
            let text = prepared_statements().get(&id).cloned()?;
            let select = Select::parse(&text)?;
            let source = Source::of(&select)?;
            run(&select, &source, parameters, node, session)
        }
        _ => return None,
    };
    Some(match result {
        Ok(result) => Response::Result(result),
        Err(error) => Response::Error(error),
    })
}

/// The id of a prepared statement: FNV-1a over its text, 128 bits, the same function as
/// `query_id` in lib.rs, so a statement has one id whichever side answers it.
pub fn statement_id(text: &str) -> u128 {
    let mut hash: u128 = 0x6c62272e07bb014262b821756295c58d;
    for byte in text.as_bytes() {
        hash ^= u128::from(*byte);
        hash = hash.wrapping_mul(0x0000000001000000000000000000013B);
    }
    hash
}

/// The statements prepared here, by id. The id is a function of the text, so one map serves
/// every emulator in the process.
fn prepared_statements() -> std::sync::RwLockReadGuard<'static, HashMap<u128, String>> {
    registry().read().unwrap_or_else(PoisonError::into_inner)
}

fn registry() -> &'static RwLock<HashMap<u128, String>> {
    static PREPARED: OnceLock<RwLock<HashMap<u128, String>>> = OnceLock::new();
    PREPARED.get_or_init(|| {
        let topology = TOPOLOGY_STATEMENTS.iter().map(|text| (*text).to_owned());
        let schema = SCHEMA_STATEMENTS.iter().flat_map(|text| {
            [
                (*text).to_owned(),
                format!("{text} where keyspace_name in ?"),
            ]
        });
        let known = topology
            .chain(schema)
            .map(|text| (statement_id(&text), text));
        RwLock::new(known.collect())
    })
}

/// Most system statements remembered for EXECUTE.
const MAX_PREPARED: usize = 1024;

fn prepare(
    text: &str,
    select: &Select,
    source: &Source,
    node: SocketAddr,
    session: &Mutex<KassandraSession>,
) -> Result<QueryResult, CqlError> {
    let table = source.load(node, session)?;
    let selection = Selection::resolve(select, &table)?;
    let id = statement_id(text);
    let mut known = registry().write().unwrap_or_else(PoisonError::into_inner);
    // Bounded: a client that prepares endless variants (every LIMIT n) must not grow it forever;
    // past the bound a statement is answered but its EXECUTE goes to kassandra.
    if known.len() < MAX_PREPARED || known.contains_key(&id) {
        known.insert(id, text.to_owned());
    }
    drop(known);
    Ok(QueryResult::Prepared(Prepared {
        id,
        prepared_metadata: PreparedMetadata {
            pk_indexes: Vec::new(),
            global_spec: Some(table.spec()),
            col_specs: selection.bind_specs(&table),
        },
        result_metadata: table.result_metadata(&selection.columns),
    }))
}

/// Runs a SELECT (a QUERY, or the EXECUTE of a statement prepared here). The answer is never
/// paged: these tables hold a few hundred rows at most.
fn run(
    select: &Select,
    source: &Source,
    parameters: &[u8],
    node: SocketAddr,
    session: &Mutex<KassandraSession>,
) -> Result<QueryResult, CqlError> {
    let values = QueryParameters::parse(parameters, FrameFlags::empty())?.data;
    let table = source.load(node, session)?;
    let selection = Selection::resolve(select, &table)?;
    let wanted = selection.wanted(&values)?;
    let rows = table
        .rows
        .iter()
        .filter(|row| {
            let mut restrictions = selection.restrictions.iter().zip(&wanted);
            restrictions.all(|((index, _), wanted)| {
                cell(row, *index)
                    .and_then(as_text)
                    .is_some_and(|value| wanted.contains(&value))
            })
        })
        .take(selection.limit)
        .map(|row| Row {
            columns: selection
                .columns
                .iter()
                .map(|&index| cell(row, index).cloned())
                .collect(),
        })
        .collect();
    Ok(QueryResult::Rows(Rows {
        metadata: table.result_metadata(&selection.columns),
        rows,
    }))
}

fn cell(row: &[Option<CqlValue>], index: usize) -> Option<&CqlValue> {
    row.get(index).and_then(Option::as_ref)
}

/// A value as text, for comparing it with the literals and bound values of a WHERE clause.
fn as_text(value: &CqlValue) -> Option<String> {
    match value {
        CqlValue::Text(text) | CqlValue::Ascii(text) => Some(text.clone()),
        CqlValue::Int(number) => Some(number.to_string()),
        CqlValue::BigInt(number) => Some(number.to_string()),
        CqlValue::Inet(address) => Some(address.to_string()),
        CqlValue::Uuid(uuid) => Some(uuid.to_string()),
        _ => None,
    }
}

fn invalid(reason: impl ToString) -> CqlError {
    CqlError::new(DbError::Invalid, reason)
}

/// A table as this node presents it: its columns and all of its rows.
struct Table {
    keyspace: &'static str,
    name: String,
    columns: Vec<(String, ColumnType)>,
    rows: Vec<Vec<Option<CqlValue>>>,
}

impl Table {
    fn empty(keyspace: &'static str, name: &str, columns: Vec<(&str, ColumnType)>) -> Table {
        Table {
            keyspace,
            name: name.to_owned(),
            columns: columns
                .into_iter()
                .map(|(name, typ)| (name.to_owned(), typ))
                .collect(),
            rows: Vec::new(),
        }
    }

    fn spec(&self) -> TableSpec {
        TableSpec {
            ks_name: self.keyspace.to_owned(),
            table_name: self.name.clone(),
        }
    }

    fn result_metadata(&self, columns: &[usize]) -> ResultMetadata {
        ResultMetadata {
            global_spec: Some(self.spec()),
            paging_state: None,
            col_specs: columns
                .iter()
                .filter_map(|&index| self.columns.get(index))
                .map(|(name, typ)| ColumnSpec::new(name.clone(), typ.clone()))
                .collect(),
        }
    }
}

/// Where the rows of a table served here come from.
enum Source {
    Local,
    Peers,
    PeersV2,
    /// A `system_schema` table, read from kassandra's own.
    Schema(String),
    /// A ScyllaDB-only table. Cassandra answers "unconfigured table", which is how the driver
    /// learns that it is not talking to ScyllaDB.
    ScyllaOnly(String),
}

impl Source {
    fn of(select: &Select) -> Option<Source> {
        match (select.keyspace.as_str(), select.table.as_str()) {
            ("system", "local") => Some(Source::Local),
            ("system", "peers") => Some(Source::Peers),
            ("system", "peers_v2") => Some(Source::PeersV2),
            ("system_schema", table @ ("keyspaces" | "types" | "columns" | "tables" | "views")) => {
                Some(Source::Schema(table.to_owned()))
            }
            ("system_schema", table @ ("scylla_tables" | "scylla_keyspaces")) => {
                Some(Source::ScyllaOnly(table.to_owned()))
            }
            _ => None,
        }
    }

    fn load(&self, node: SocketAddr, session: &Mutex<KassandraSession>) -> Result<Table, CqlError> {
        match self {
            Source::Local => Ok(local_table(node)),
            Source::Peers => Ok(peers_table()),
            Source::PeersV2 => Ok(peers_v2_table()),
            Source::Schema(name) => schema_table(name, session),
            Source::ScyllaOnly(name) => Err(invalid(format!("unconfigured table {name}"))),
        }
    }
}

fn text_set() -> ColumnType {
    ColumnType::Set(Box::new(ColumnType::Text))
}

/// A uuid value. The project has no `uuid` dependency of its own, so the value is read the way
/// kassandra reads one off the wire.
fn uuid(value: u128) -> Option<CqlValue> {
    deserialize_value(&value.to_be_bytes(), &ColumnType::Uuid).ok()
}

/// Cassandra 4.0's `system.local`, one row.
fn local_table(node: SocketAddr) -> Table {
    let text = |value: &str| Some(CqlValue::Text(value.to_owned()));
    let int = |value: i32| Some(CqlValue::Int(value));
    let address = Some(CqlValue::Inet(node.ip()));
    let cells: Vec<(&str, ColumnType, Option<CqlValue>)> = vec![
        ("key", ColumnType::Text, text("local")),
        ("bootstrapped", ColumnType::Text, text("COMPLETED")),
        ("broadcast_address", ColumnType::Inet, address.clone()),
        ("broadcast_port", ColumnType::Int, int(STORAGE_PORT)),
        ("cluster_name", ColumnType::Text, text(CLUSTER_NAME)),
        ("cql_version", ColumnType::Text, text(CQL_VERSION)),
        ("data_center", ColumnType::Text, text(DATA_CENTER)),
        ("gossip_generation", ColumnType::Int, int(GOSSIP_GENERATION)),
        ("host_id", ColumnType::Uuid, uuid(HOST_ID)),
        ("listen_address", ColumnType::Inet, address.clone()),
        ("listen_port", ColumnType::Int, int(STORAGE_PORT)),
        ("native_protocol_version", ColumnType::Text, text("4")),
        ("partitioner", ColumnType::Text, text(PARTITIONER)),
        ("rack", ColumnType::Text, text(RACK)),
        ("release_version", ColumnType::Text, text(RELEASE_VERSION)),
        ("rpc_address", ColumnType::Inet, address),
        ("rpc_port", ColumnType::Int, int(i32::from(node.port()))),
        ("schema_version", ColumnType::Uuid, uuid(SCHEMA_VERSION)),
        (
            "tokens",
            text_set(),
            Some(CqlValue::Set(vec![CqlValue::Text(TOKEN.to_owned())])),
        ),
        (
            "truncated_at",
            ColumnType::Map(Box::new(ColumnType::Uuid), Box::new(ColumnType::Blob)),
            None,
        ),
    ];
    let (columns, row): (Vec<_>, Vec<_>) = cells
        .into_iter()
        .map(|(name, typ, value)| ((name.to_owned(), typ), value))
        .unzip();
    Table {
        keyspace: "system",
        name: "local".to_owned(),
        columns,
        rows: vec![row],
    }
}

/// Cassandra 4.0's `system.peers`: empty, this node has none.
fn peers_table() -> Table {
    Table::empty(
        "system",
        "peers",
        vec![
            ("peer", ColumnType::Inet),
            ("data_center", ColumnType::Text),
            ("host_id", ColumnType::Uuid),
            ("preferred_ip", ColumnType::Inet),
            ("rack", ColumnType::Text),
            ("release_version", ColumnType::Text),
            ("rpc_address", ColumnType::Inet),
            ("schema_version", ColumnType::Uuid),
            ("tokens", text_set()),
        ],
    )
}

/// Cassandra 4.0's `system.peers_v2`: empty too.
fn peers_v2_table() -> Table {
    Table::empty(
        "system",
        "peers_v2",
        vec![
            ("peer", ColumnType::Inet),
            ("peer_port", ColumnType::Int),
            ("data_center", ColumnType::Text),
            ("host_id", ColumnType::Uuid),
            ("native_address", ColumnType::Inet),
            ("native_port", ColumnType::Int),
            ("preferred_ip", ColumnType::Inet),
            ("preferred_port", ColumnType::Int),
            ("rack", ColumnType::Text),
            ("release_version", ColumnType::Text),
            ("schema_version", ColumnType::Uuid),
            ("tokens", text_set()),
        ],
    )
}

/// A `system_schema` table as kassandra holds it, with the type names the driver parses.
fn schema_table(name: &str, session: &Mutex<KassandraSession>) -> Result<Table, CqlError> {
    let text = format!("SELECT * FROM system_schema.{name}");
    let mut query = Query::simple(&text)?;
    // All in one page (kassandra pages scans by 500 rows unless told otherwise).
    query.parameters.result_page_size = Some(usize::MAX);
    let result = session
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .process(query)?;
    let QueryResult::Rows(Rows { metadata, rows }) = result else {
        return Err(CqlError::new(
            DbError::ServerError,
            format!("kassandra returned no rows for system_schema.{name}"),
        ));
    };
    let columns: Vec<(String, ColumnType)> = metadata
        .col_specs
        .into_iter()
        .map(|spec| (spec.name, spec.typ))
        .collect();
    let mut rows: Vec<Vec<Option<CqlValue>>> = rows.into_iter().map(|row| row.columns).collect();
    let type_column = match name {
        "columns" => Some("type"),
        "types" => Some("field_types"),
        _ => None,
    };
    if let Some(index) =
        type_column.and_then(|wanted| columns.iter().position(|(c, _)| c == wanted))
    {
        for value in rows
            .iter_mut()
            .filter_map(|row| row.get_mut(index)?.as_mut())
        {
            use_driver_type_names(value);
        }
    }
    Ok(Table {
        keyspace: "system_schema",
        name: name.to_owned(),
        columns,
        rows,
    })
}

/// Rewrites the type names in a `type` (text) or `field_types` (list of text) value.
fn use_driver_type_names(value: &mut CqlValue) {
    match value {
        CqlValue::Text(typ) => *typ = driver_type_name(typ),
        CqlValue::List(items) => items.iter_mut().for_each(use_driver_type_names),
        _ => {}
    }
}

/// kassandra's `ColumnType::into_cql` writes `bool` for `boolean` and `timyint` for `tinyint`:
/// `map<text, bool>` becomes `map<text, boolean>`.
fn driver_type_name(typ: &str) -> String {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(typ.len() + 3);
    let mut rest = typ;
    while !rest.is_empty() {
        let (word, tail) = rest.split_at(rest.find(|c: char| !is_word(c)).unwrap_or(rest.len()));
        out.push_str(match word {
            "bool" => "boolean",
            "timyint" => "tinyint",
            other => other,
        });
        let (separators, tail) = tail.split_at(tail.find(is_word).unwrap_or(tail.len()));
        out.push_str(separators);
        rest = tail;
    }
    out
}

/// `SELECT <columns | *> FROM <keyspace>.<table> [WHERE r [AND r]...] [LIMIT n]
/// [ALLOW FILTERING] [USING TIMEOUT t]`, where r is `column = 'text'`, `column = ?`,
/// `column IN ('a', 'b')` or `column IN ?`. Anything else is left to kassandra.
#[derive(Debug)]
struct Select {
    /// `None` for `*`.
    columns: Option<Vec<String>>,
    keyspace: String,
    table: String,
    restrictions: Vec<Restriction>,
    limit: Option<usize>,
}

#[derive(Debug)]
struct Restriction {
    column: String,
    operator: Operator,
    operand: Operand,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Operator {
    Eq,
    In,
}

#[derive(Debug)]
enum Operand {
    Literals(Vec<String>),
    Marker,
}

impl Select {
    fn parse(text: &str) -> Option<Select> {
        // Most statements are not SELECTs: turn them away before tokenizing.
        let start = text.trim_start().get(..6)?;
        if !start.eq_ignore_ascii_case("select") {
            return None;
        }
        let mut tokens = Tokens::new(text)?;
        if !tokens.keyword("select") {
            return None;
        }
        let columns = if tokens.symbol('*') {
            None
        } else {
            let mut columns = vec![tokens.identifier()?];
            while tokens.symbol(',') {
                columns.push(tokens.identifier()?);
            }
            Some(columns)
        };
        if !tokens.keyword("from") {
            return None;
        }
        let keyspace = tokens.identifier()?;
        if !tokens.symbol('.') {
            return None;
        }
        let table = tokens.identifier()?;
        let mut restrictions = Vec::new();
        if tokens.keyword("where") {
            loop {
                restrictions.push(Restriction::parse(&mut tokens)?);
                if !tokens.keyword("and") {
                    break;
                }
            }
        }
        let limit = if tokens.keyword("limit") {
            Some(tokens.literal()?.parse::<usize>().ok()?)
        } else {
            None
        };
        if tokens.keyword("allow") && !tokens.keyword("filtering") {
            return None;
        }
        // ScyllaDB's server-side timeout, which the driver appends for ScyllaDB only.
        if tokens.keyword("using") && !(tokens.keyword("timeout") && tokens.next().is_some()) {
            return None;
        }
        tokens.symbol(';');
        tokens.at_end().then_some(Select {
            columns,
            keyspace,
            table,
            restrictions,
            limit,
        })
    }
}

impl Restriction {
    fn parse(tokens: &mut Tokens) -> Option<Restriction> {
        let column = tokens.identifier()?;
        let operator = if tokens.symbol('=') {
            Operator::Eq
        } else if tokens.keyword("in") {
            Operator::In
        } else {
            return None;
        };
        let operand = if tokens.symbol('?') {
            Operand::Marker
        } else if operator == Operator::Eq {
            Operand::Literals(vec![tokens.literal()?])
        } else {
            if !tokens.symbol('(') {
                return None;
            }
            let mut literals = vec![tokens.literal()?];
            while tokens.symbol(',') {
                literals.push(tokens.literal()?);
            }
            if !tokens.symbol(')') {
                return None;
            }
            Operand::Literals(literals)
        };
        Some(Restriction {
            column,
            operator,
            operand,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// A keyword, an unquoted identifier or a number, lowercased.
    Word(String),
    /// A "quoted identifier", case kept.
    Quoted(String),
    /// A 'string literal'.
    Literal(String),
    Symbol(char),
}

struct Tokens {
    tokens: Vec<Token>,
    at: usize,
}

impl Tokens {
    /// `None` when the text holds anything the grammar above has no use for.
    fn new(text: &str) -> Option<Tokens> {
        let is_word = |c: char| c.is_alphanumeric() || c == '_';
        let mut tokens = Vec::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() => {}
                '\'' | '"' => {
                    // Quoted up to the next lone quote; a doubled quote stands for itself.
                    let mut quoted = String::new();
                    loop {
                        let next = chars.next()?;
                        if next != c {
                            quoted.push(next);
                        } else if chars.peek() == Some(&c) {
                            chars.next();
                            quoted.push(c);
                        } else {
                            break;
                        }
                    }
                    tokens.push(if c == '\'' {
                        Token::Literal(quoted)
                    } else {
                        Token::Quoted(quoted)
                    });
                }
                c if is_word(c) => {
                    let mut word: String = c.to_lowercase().collect();
                    while let Some(&next) = chars.peek().filter(|next| is_word(**next)) {
                        word.extend(next.to_lowercase());
                        chars.next();
                    }
                    tokens.push(Token::Word(word));
                }
                ',' | '.' | '(' | ')' | '=' | '?' | '*' | ';' => tokens.push(Token::Symbol(c)),
                _ => return None,
            }
        }
        Some(Tokens { tokens, at: 0 })
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at)?.clone();
        self.at += 1;
        Some(token)
    }

    /// Takes `token` if it comes next.
    fn take(&mut self, token: &Token) -> bool {
        let found = self.tokens.get(self.at) == Some(token);
        if found {
            self.at += 1;
        }
        found
    }

    fn keyword(&mut self, word: &str) -> bool {
        self.take(&Token::Word(word.to_owned()))
    }

    fn symbol(&mut self, symbol: char) -> bool {
        self.take(&Token::Symbol(symbol))
    }

    fn identifier(&mut self) -> Option<String> {
        match self.next()? {
            Token::Word(word) if !word.starts_with(|c: char| c.is_ascii_digit()) => Some(word),
            Token::Quoted(name) => Some(name),
            _ => None,
        }
    }

    /// A string literal, or a number.
    fn literal(&mut self) -> Option<String> {
        match self.next()? {
            Token::Literal(text) => Some(text),
            Token::Word(word) if word.chars().all(|c| c.is_ascii_digit()) => Some(word),
            _ => None,
        }
    }

    fn at_end(&self) -> bool {
        self.at >= self.tokens.len()
    }
}

/// A SELECT resolved against a table: where its selected and restricted columns are.
struct Selection<'q> {
    columns: Vec<usize>,
    restrictions: Vec<(usize, &'q Restriction)>,
    limit: usize,
}

impl<'q> Selection<'q> {
    fn resolve(select: &'q Select, table: &Table) -> Result<Selection<'q>, CqlError> {
        let position = |name: &str| {
            table
                .columns
                .iter()
                .position(|(column, _)| column == name)
                .ok_or_else(|| {
                    invalid(format!(
                        "Undefined column name {name} in table {}.{}",
                        table.keyspace, table.name
                    ))
                })
        };
        let columns: Vec<usize> = match &select.columns {
            None => (0..table.columns.len()).collect(),
            Some(names) => names
                .iter()
                .map(|name| position(name))
                .collect::<Result<_, _>>()?,
        };
        let restrictions: Vec<(usize, &Restriction)> = select
            .restrictions
            .iter()
            .map(|restriction| -> Result<(usize, &'q Restriction), CqlError> {
                let index = position(&restriction.column)?;
                let is_text = table
                    .columns
                    .get(index)
                    .is_some_and(|(_, typ)| *typ == ColumnType::Text);
                if matches!(restriction.operand, Operand::Marker) && !is_text {
                    return Err(invalid(format!(
                        "the emulator binds values to text columns of system tables only, not to {}",
                        restriction.column
                    )));
                }
                Ok((index, restriction))
            })
            .collect::<Result<_, _>>()?;
        Ok(Selection {
            columns,
            restrictions,
            limit: select.limit.unwrap_or(usize::MAX),
        })
    }

    /// The bind variables: `column` (text) for `column = ?`, `in(column)` (list<text>) for
    /// `column IN ?`, as Cassandra names them.
    fn bind_specs(&self, table: &Table) -> Vec<ColumnSpec> {
        self.restrictions
            .iter()
            .filter(|(_, restriction)| matches!(restriction.operand, Operand::Marker))
            .filter_map(|(index, restriction)| {
                let (name, _) = table.columns.get(*index)?;
                Some(match restriction.operator {
                    Operator::Eq => ColumnSpec::new(name.clone(), ColumnType::Text),
                    Operator::In => ColumnSpec::new(
                        format!("in({name})"),
                        ColumnType::List(Box::new(ColumnType::Text)),
                    ),
                })
            })
            .collect()
    }

    /// The values each restriction accepts, in order, with the bound values filled in.
    fn wanted(&self, values: &[FrameValue<'_>]) -> Result<Vec<Vec<String>>, CqlError> {
        let markers = self
            .restrictions
            .iter()
            .filter(|(_, restriction)| matches!(restriction.operand, Operand::Marker))
            .count();
        if markers != values.len() {
            return Err(invalid(format!(
                "There were {markers} markers(?) in CQL but {} bound variables",
                values.len()
            )));
        }
        let mut values = values.iter();
        self.restrictions
            .iter()
            .map(|(_, restriction)| -> Result<Vec<String>, CqlError> {
                match &restriction.operand {
                    Operand::Literals(literals) => Ok(literals.clone()),
                    Operand::Marker => {
                        let Some(FrameValue::Some(bytes)) = values.next() else {
                            return Err(invalid(format!(
                                "Invalid null or unset value for {}",
                                restriction.column
                            )));
                        };
                        match restriction.operator {
                            Operator::Eq => Ok(vec![String::from_utf8_lossy(bytes).into_owned()]),
                            Operator::In => {
                                let list = ColumnType::List(Box::new(ColumnType::Text));
                                match deserialize_value(bytes, &list)? {
                                    CqlValue::List(items) => {
                                        Ok(items.iter().filter_map(as_text).collect())
                                    }
                                    _ => Err(invalid("expected a list of text")),
                                }
                            }
                        }
                    }
                }
            })
            .collect()
    }
}

/// `[long string]`: an int length, then that many bytes of UTF-8.
fn long_string(body: &[u8]) -> Option<(&str, &[u8])> {
    let (length, rest) = body.split_first_chunk::<4>()?;
    let length = usize::try_from(i32::from_be_bytes(*length)).ok()?;
    let (text, rest) = rest.split_at_checked(length)?;
    Some((std::str::from_utf8(text).ok()?, rest))
}

/// `[short bytes]`: a short length, then that many bytes.
fn short_bytes(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (length, rest) = body.split_first_chunk::<2>()?;
    rest.split_at_checked(usize::from(u16::from_be_bytes(*length)))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Mutex;

    use kassandra::cql::column::ColumnType;
    use kassandra::cql::value::CqlValue;
    use kassandra::error::DbError;
    use kassandra::frame::request::RequestOpcode;
    use kassandra::frame::response::error::Error as CqlError;
    use kassandra::frame::response::result::QueryResult;
    use kassandra::frame::response::Response;
    use kassandra::session::KassandraSession;

    use super::{answer, driver_type_name, statement_id, Select};

    const LOCAL: &str = "SELECT host_id, rpc_address, data_center, rack, tokens, cluster_name FROM system.local WHERE key='local'";
    const PEERS: &str = "SELECT host_id, rpc_address, data_center, rack, tokens FROM system.peers";

    fn node() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 7], 19042))
    }

    fn session() -> Mutex<KassandraSession> {
        Mutex::new(KassandraSession::new())
    }

    fn long_string(text: &str) -> Vec<u8> {
        let mut body = i32::try_from(text.len()).unwrap().to_be_bytes().to_vec();
        body.extend_from_slice(text.as_bytes());
        body
    }

    /// Query parameters: consistency ONE, then the values, if any.
    fn parameters(values: &[Vec<u8>]) -> Vec<u8> {
        let mut body = vec![0, 1];
        if values.is_empty() {
            body.push(0);
            return body;
        }
        body.push(0x01);
        body.extend_from_slice(&u16::try_from(values.len()).unwrap().to_be_bytes());
        for value in values {
            body.extend_from_slice(&i32::try_from(value.len()).unwrap().to_be_bytes());
            body.extend_from_slice(value);
        }
        body
    }

    fn text_list(items: &[&str]) -> Vec<u8> {
        let mut value = i32::try_from(items.len()).unwrap().to_be_bytes().to_vec();
        for item in items {
            value.extend_from_slice(&i32::try_from(item.len()).unwrap().to_be_bytes());
            value.extend_from_slice(item.as_bytes());
        }
        value
    }

    fn query(text: &str, session: &Mutex<KassandraSession>) -> Option<Response> {
        let mut body = long_string(text);
        body.extend(parameters(&[]));
        answer(RequestOpcode::Query, &body, node(), session)
    }

    fn prepare(text: &str, session: &Mutex<KassandraSession>) -> Option<Response> {
        answer(RequestOpcode::Prepare, &long_string(text), node(), session)
    }

    fn execute(
        text: &str,
        values: &[Vec<u8>],
        session: &Mutex<KassandraSession>,
    ) -> Option<Response> {
        let mut body = 16u16.to_be_bytes().to_vec();
        body.extend_from_slice(&statement_id(text).to_be_bytes());
        body.extend(parameters(values));
        answer(RequestOpcode::Execute, &body, node(), session)
    }

    /// The column names and the rows of a Rows answer.
    fn rows_of(response: Option<Response>) -> (Vec<String>, Vec<Vec<Option<CqlValue>>>) {
        match response {
            Some(Response::Result(QueryResult::Rows(rows))) => (
                rows.metadata
                    .col_specs
                    .into_iter()
                    .map(|spec| spec.name)
                    .collect(),
                rows.rows.into_iter().map(|row| row.columns).collect(),
            ),
            other => panic!("expected rows, got {other:?}"),
        }
    }

    fn text(value: &str) -> Option<CqlValue> {
        Some(CqlValue::Text(value.to_owned()))
    }

    #[test]
    fn the_driver_s_local_query_takes_no_bind_variables() {
        let Some(Response::Result(QueryResult::Prepared(prepared))) = prepare(LOCAL, &session())
        else {
            panic!("expected a Prepared answer");
        };
        assert_eq!(prepared.id, statement_id(LOCAL));
        assert!(prepared.prepared_metadata.col_specs.is_empty());
        let columns: Vec<(String, ColumnType)> = prepared
            .result_metadata
            .col_specs
            .into_iter()
            .map(|spec| (spec.name, spec.typ))
            .collect();
        assert_eq!(
            columns,
            vec![
                ("host_id".to_owned(), ColumnType::Uuid),
                ("rpc_address".to_owned(), ColumnType::Inet),
                ("data_center".to_owned(), ColumnType::Text),
                ("rack".to_owned(), ColumnType::Text),
                (
                    "tokens".to_owned(),
                    ColumnType::Set(Box::new(ColumnType::Text))
                ),
                ("cluster_name".to_owned(), ColumnType::Text),
            ]
        );
    }

    /// Executed without a PREPARE first: a driver that prepared it before a restart.
    #[test]
    fn the_local_row_names_the_address_the_client_connected_to() {
        let (_, rows) = rows_of(execute(LOCAL, &[], &session()));
        assert_eq!(rows.len(), 1);
        let row = &rows[0];
        assert!(matches!(row[0], Some(CqlValue::Uuid(_))));
        assert_eq!(row[1], Some(CqlValue::Inet(node().ip())));
        assert_eq!(row[2], text("datacenter1"));
        assert_eq!(row[3], text("rack1"));
        assert_eq!(
            row[4],
            Some(CqlValue::Set(vec![CqlValue::Text("0".to_owned())]))
        );
    }

    #[test]
    fn there_are_no_peers() {
        let (names, rows) = rows_of(execute(PEERS, &[], &session()));
        assert_eq!(
            names,
            ["host_id", "rpc_address", "data_center", "rack", "tokens"]
        );
        assert!(rows.is_empty());
        let (_, rows) = rows_of(query("SELECT * FROM system.peers_v2", &session()));
        assert!(rows.is_empty());
    }

    #[test]
    fn other_statements_on_system_tables_are_prepared_and_executed_here() {
        let session = session();
        let statement = "SELECT rack, release_version FROM system.local WHERE key = ?";
        let Some(Response::Result(QueryResult::Prepared(prepared))) = prepare(statement, &session)
        else {
            panic!("expected a Prepared answer");
        };
        assert_eq!(prepared.prepared_metadata.col_specs.len(), 1);
        let (_, rows) = rows_of(execute(statement, &[b"local".to_vec()], &session));
        assert_eq!(rows, vec![vec![text("rack1"), text("4.0.0")]]);
        let (_, rows) = rows_of(execute(statement, &[b"elsewhere".to_vec()], &session));
        assert!(rows.is_empty());
    }

    #[test]
    fn the_project_s_own_queries_are_answered() {
        let session = session();
        let (_, rows) = rows_of(query("SELECT release_version FROM system.local", &session));
        assert_eq!(rows, vec![vec![text("4.0.0")]]);
        let (names, _) = rows_of(query("SELECT * FROM system.local", &session));
        assert!(names.iter().any(|name| name == "schema_version"));
        let (_, rows) = rows_of(query(
            "SELECT keyspace_name, table_name FROM system_schema.tables",
            &session,
        ));
        assert!(rows.contains(&vec![text("system"), text("local")]));
    }

    #[test]
    fn schema_columns_use_the_type_names_the_driver_parses() {
        let statement = "SELECT keyspace_name, table_name, column_name, kind, position, type FROM system_schema.columns";
        let (_, rows) = rows_of(execute(statement, &[], &session()));
        let types: Vec<String> = rows
            .iter()
            .filter_map(|row| match &row[5] {
                Some(CqlValue::Text(typ)) => Some(typ.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(types.len(), rows.len());
        assert!(types.iter().any(|typ| typ == "boolean"));
        for typ in &types {
            let mut words = typ.split(|c: char| !(c.is_alphanumeric() || c == '_'));
            assert!(
                !words.any(|word| word == "bool" || word == "timyint"),
                "{typ}"
            );
        }
        assert_eq!(driver_type_name("map<text, bool>"), "map<text, boolean>");
        assert_eq!(driver_type_name("list<timyint>"), "list<tinyint>");
    }

    #[test]
    fn keyspaces_can_be_filtered_with_a_bound_list() {
        let session = session();
        let statement = "SELECT keyspace_name, replication, durable_writes FROM system_schema.keyspaces where keyspace_name in ?";
        let Some(Response::Result(QueryResult::Prepared(prepared))) = prepare(statement, &session)
        else {
            panic!("expected a Prepared answer");
        };
        let binds: Vec<(String, ColumnType)> = prepared
            .prepared_metadata
            .col_specs
            .into_iter()
            .map(|spec| (spec.name, spec.typ))
            .collect();
        assert_eq!(
            binds,
            vec![(
                "in(keyspace_name)".to_owned(),
                ColumnType::List(Box::new(ColumnType::Text))
            )]
        );
        let (_, rows) = rows_of(execute(
            statement,
            &[text_list(&["system_schema"])],
            &session,
        ));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0][0], text("system_schema"));
        assert_eq!(rows[0][2], Some(CqlValue::Boolean(true)));
    }

    #[test]
    fn scylla_only_tables_are_unconfigured() {
        let response = prepare(
            "SELECT keyspace_name, initial_tablets FROM system_schema.scylla_keyspaces",
            &session(),
        );
        assert!(matches!(
            response,
            Some(Response::Error(CqlError {
                error: DbError::Invalid,
                ..
            }))
        ));
    }

    #[test]
    fn unknown_columns_are_refused() {
        let response = query("SELECT nope FROM system.local", &session());
        assert!(matches!(
            response,
            Some(Response::Error(CqlError {
                error: DbError::Invalid,
                ..
            }))
        ));
    }

    #[test]
    fn everything_else_goes_to_kassandra() {
        let session = session();
        assert!(query("SELECT * FROM orderstream.orders", &session).is_none());
        assert!(query("INSERT INTO system.local (key) VALUES ('x')", &session).is_none());
        assert!(prepare("SELECT * FROM system_schema.functions", &session).is_none());
        assert!(prepare("SELECT now() FROM system.local", &session).is_none());
        assert!(execute("SELECT 1", &[], &session).is_none());
        assert!(answer(RequestOpcode::Options, &[], node(), &session).is_none());
    }

    #[test]
    fn selects_are_parsed() {
        let select = Select::parse(
            "select key, \"Rack\" FROM system.local where key = 'lo''cal' and rack in ('a', 'b') \
             LIMIT 1 ALLOW FILTERING;",
        )
        .unwrap();
        assert_eq!(
            select.columns,
            Some(vec!["key".to_owned(), "Rack".to_owned()])
        );
        assert_eq!(
            (select.keyspace.as_str(), select.table.as_str()),
            ("system", "local")
        );
        assert_eq!(select.restrictions.len(), 2);
        assert_eq!(select.limit, Some(1));
        assert!(Select::parse("SELECT * FROM system.local WHERE key > 'a'").is_none());
        assert!(Select::parse("SELECT * FROM system.local USING TIMEOUT 30000ms").is_some());
    }
}
