//! TLS shared by the stores' clients. One library serves all three: librdkafka, the scylla
//! driver (its OpenSSL backend) and sqlx (native-tls) all use the system's OpenSSL, so a CA
//! file or a key one client reads, the others read too.

use std::error::Error;

use openssl::ssl::{SslConnector, SslConnectorBuilder, SslFiletype, SslMethod, SslVerifyMode};

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
        builder
            .set_ca_file(files.ca)
            .map_err(|e| format!("cannot load CA file {}: {e}", files.ca))?;
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

/// Whether `err` is a TLS handshake that the peer's certificate or protocol failed (a wrong
/// CA, a certificate naming another host), which no retry can fix, rather than a connection
/// broken on the way. OpenSSL reports the first with its error queue (`ErrorStack`) and the
/// second with an I/O error under its own.
pub(crate) fn is_rejected_handshake(err: &(dyn Error + 'static)) -> bool {
    let mut rejected = false;
    let mut next = Some(err);
    while let Some(e) = next {
        // An I/O error hides what it wraps from `source()`: look inside.
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn Error + 'static));
        if let Some(ssl) = inner.and_then(|i| i.downcast_ref::<openssl::ssl::Error>()) {
            return ssl.io_error().is_none() && ssl.ssl_error().is_some();
        }
        if e.is::<openssl::error::ErrorStack>() {
            rejected = true;
        }
        if e.is::<std::io::Error>() && rejected {
            return false;
        }
        next = e.source();
    }
    rejected
}

/// Whether an I/O error is anywhere in `err`'s chain: the connection broke, so a retry may
/// succeed.
pub(crate) fn has_io_error(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<std::io::Error>() {
            return true;
        }
        next = e.source();
    }
    false
}
