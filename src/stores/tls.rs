//! TLS shared by the stores' clients. One library serves all three: librdkafka, the scylla
//! driver (its OpenSSL backend) and sqlx (native-tls) all use the system's OpenSSL, so a CA
//! file or a key one client reads, the others read too.

use std::error::Error;

use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::X509;

/// OpenSSL's `X509_V_ERR_IP_ADDRESS_MISMATCH`: the chain is good, the certificate does not
/// name the address it was reached at.
const IP_ADDRESS_MISMATCH: i32 = 64;
/// `X509_V_ERR_HOSTNAME_MISMATCH`.
const HOSTNAME_MISMATCH: i32 = 62;

/// Files and checks of one TLS client.
pub(crate) struct TlsFiles<'a> {
    /// PEM certificate authorities; empty: the system's trust store.
    pub ca: &'a str,
    /// Client certificate and its key (PEM), both empty or both given.
    pub certificate: &'a str,
    pub key: &'a str,
    /// Whether the peer's certificate must name the host or address it was reached at.
    pub verify_hostname: bool,
}

/// A connector that checks the peer's chain against `files.ca` (and its name, unless told
/// not to), presenting the client certificate when one is given.
pub(crate) fn connector(files: &TlsFiles<'_>) -> Result<SslConnectorBuilder, String> {
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(|e| e.to_string())?;
    if !files.ca.is_empty() {
        // The file's authorities instead of the system's, not beside them.
        builder.set_cert_store(trust_store(files.ca)?);
    }
    if !files.certificate.is_empty() {
        builder
            .set_certificate_chain_file(files.certificate)
            .map_err(|e| format!("cannot load certificate {}: {e}", files.certificate))?;
        builder
            .set_private_key_file(files.key, SslFiletype::PEM)
            .map_err(|e| format!("cannot load key {}: {e}", files.key))?;
        builder
            .check_private_key()
            .map_err(|e| format!("{} is not the key of {}: {e}", files.key, files.certificate))?;
    }
    if !files.verify_hostname {
        // The chain is still verified; only a name mismatch is let through.
        builder.set_verify_callback(SslVerifyMode::PEER, |preverified, context| {
            let error = context.error().as_raw();
            preverified || error == IP_ADDRESS_MISMATCH || error == HOSTNAME_MISMATCH
        });
    }
    Ok(builder)
}

/// A trust store holding every certificate of a PEM file (a bundle, or a single CA).
fn trust_store(file: &str) -> Result<X509Store, String> {
    let pem = std::fs::read(file).map_err(|e| format!("cannot read CA file {file}: {e}"))?;
    let certificates =
        X509::stack_from_pem(&pem).map_err(|e| format!("CA file {file} is not PEM: {e}"))?;
    if certificates.is_empty() {
        return Err(format!("CA file {file} holds no certificate"));
    }
    let mut store = X509StoreBuilder::new().map_err(|e| e.to_string())?;
    for certificate in certificates {
        store
            .add_cert(certificate)
            .map_err(|e| format!("CA file {file}: {e}"))?;
    }
    Ok(store.build())
}

/// What a failed TLS connection says about retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Handshake {
    /// The peer failed the check or the protocol (a wrong CA, a certificate naming another
    /// host, an alert): the settings' to fix, no retry helps.
    Rejected,
    /// The connection broke on the way (an I/O error, or the peer closed it mid-handshake, as a
    /// proxy in front of a starting node does): a retry may succeed.
    Broken,
    /// No OpenSSL or I/O error in the chain (a client's own message).
    Unknown,
}

/// OpenSSL 3 reports a peer that closed the connection mid-handshake on its error queue, like
/// a certificate failure, rather than as an I/O error.
fn closed_mid_handshake(stack: &openssl::error::ErrorStack) -> bool {
    stack
        .errors()
        .iter()
        .any(|e| e.reason().is_some_and(|r| r.contains("unexpected eof")))
}

/// Reads a TLS failure out of an error chain.
pub(crate) fn handshake(err: &(dyn Error + 'static)) -> Handshake {
    let mut next = Some(err);
    while let Some(e) = next {
        // An I/O error hides what it wraps from `source()`: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn Error + 'static));
        if let Some(ssl) = inner.and_then(|i| i.downcast_ref::<openssl::ssl::Error>()) {
            return match ssl.ssl_error() {
                Some(stack) if ssl.io_error().is_none() && !closed_mid_handshake(stack) => {
                    Handshake::Rejected
                }
                _ => Handshake::Broken,
            };
        }
        if e.is::<std::io::Error>() {
            return Handshake::Broken;
        }
        if let Some(stack) = e.downcast_ref::<openssl::error::ErrorStack>() {
            return if closed_mid_handshake(stack) {
                Handshake::Broken
            } else {
                Handshake::Rejected
            };
        }
        next = e.source();
    }
    Handshake::Unknown
}
